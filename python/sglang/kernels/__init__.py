# SPDX-License-Identifier: Apache-2.0
"""SGLang's public kernel namespace (the subset this tree carries).

Import callable kernels from ``sglang.kernels.ops.<group>``; this package only
holds the metadata that inventories them. Importing it imports no kernel
backend: registration is metadata and backends load on first use.
"""

from sglang.kernels.registry import KernelRegistry, register_kernel, registry
from sglang.kernels.spec import (
    CapabilityRequirement,
    DeviceType,
    KernelBackend,
    KernelSpec,
    PlatformInfo,
    capabilities_satisfied,
)

# after the core imports: the groups register into the registry above
from sglang.kernels import ops  # noqa: E402  # isort: skip

__all__ = [
    "ops",
    "CapabilityRequirement",
    "DeviceType",
    "KernelBackend",
    "KernelRegistry",
    "KernelSpec",
    "PlatformInfo",
    "capabilities_satisfied",
    "register_kernel",
    "registry",
]
