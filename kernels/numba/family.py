"""Which of the Numba backend's two kernel families runs: products on tensor cores
(``mma.sync`` through numba_warp's intrinsics: numba_tc_gemm, numba_tc_attention) or on CUDA
cores (numba_gemm, numba_kernels.paged_attention). No Numba import here: the suites name the
families before anything compiles."""

from __future__ import annotations

import os

from schedbench.kernels.errors import ConfigError

MMA_MIN_CC = (8, 0)  # mma.sync.m16n8k16 with fp16 operands: sm_80 and later
KERNEL_FAMILIES = ("mma", "fma")


def kernel_family(compute_capability: tuple[int, int] | None) -> str:
    """SCHEDBENCH_NUMBA_KERNELS if set, else mma from sm_80 and fma before it. In the
    simulator (``compute_capability`` None) the default is fma: there each warp-wide MMA is a
    barrier of 32 Python threads (about 10 ms), minutes for a step."""
    can_mma = compute_capability is None or compute_capability >= MMA_MIN_CC
    default = "mma" if compute_capability is not None and can_mma else "fma"
    family = os.environ.get("SCHEDBENCH_NUMBA_KERNELS") or default
    if family not in KERNEL_FAMILIES:
        raise ConfigError(f"SCHEDBENCH_NUMBA_KERNELS={family!r}: one of {KERNEL_FAMILIES}")
    if family == "mma" and not can_mma:
        cc = ".".join(map(str, compute_capability))
        raise ConfigError(f"SCHEDBENCH_NUMBA_KERNELS=mma needs compute capability "
                          f"{'.'.join(map(str, MMA_MIN_CC))} or later (mma.sync.m16n8k16); "
                          f"this GPU has {cc}")
    return family


def kernel_families(compute_capability: tuple[int, int]) -> list[str]:
    """The families a GPU of this compute capability runs, its default first."""
    default = kernel_family(compute_capability)
    runs = [f for f in KERNEL_FAMILIES if f == "fma" or compute_capability >= MMA_MIN_CC]
    return [default] + [f for f in runs if f != default]
