# SPDX-License-Identifier: Apache-2.0
"""Server-launch plugin for SGLang's diffusion runtime (filled in by the plugin work)."""
