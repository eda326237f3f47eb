"""Compile every Numba kernel of the decode step for sm_90 (or the architecture given)
without a GPU, and report what ptxas allots it.

Run as ``python -m tests.support.numba_ptx [sm_XY]`` in a process without the CUDA simulator (the
test in test_numba_compile.py does, for sm_90 and sm_75): the simulator never compiles, so
a kernel that fails to type or lower for a real GPU, or asks for more registers or shared
memory than a launch of its block size can get, or keeps a register array in local memory,
would otherwise pass CI and show up only on a GPU. The argument types and block sizes are
those of the backend's own plan, built over host arrays, for batch 1, 2, 3, 8 and 16 (the GEMM
is a kernel per batch tile: 1, 2, 4, 8), with both GEMM families where the architecture
runs both (numba_family.kernel_families: the tensor-core kernels from sm_80). NVVM makes the PTX,
nvJitLink assembles it, nvdisasm shows the SASS (all three from pip wheels): a GEMM whose
loads ptxas has spread out between the FMAs or MMAs fails too, and so does a kernel with fp64
instructions where it means fp32. Prints one JSON object per kernel and signature.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import tempfile
import types

import numba
import numba.cuda.dispatcher as dispatcher
import numpy as np

from schedbench.kernels.layout import StepLayout
from schedbench.kernels.model import get_preset, make_weights
from schedbench.kernels.numba import backend as nbk
from schedbench.kernels.numba import gemm as ng
from schedbench.kernels.numba import tc_gemm as tg
from schedbench.kernels.numba.family import kernel_families

ARCH = "sm_90"  # what the kernels are tuned for; sm_75 is checked too (kernels/registry.py)
BATCHES = (1, 2, 3, 8, 16)


def link_info(ptx: str, arch: str) -> dict[str, int]:
    """ptxas's resource line for the one kernel in ``ptx``, through nvJitLink, and the
    longest burst of global loads in its SASS where nvdisasm is at hand."""
    from cuda.bindings import nvjitlink

    data = ptx.encode()
    handle = nvjitlink.create(2, [f"-arch={arch}", "-verbose"])
    try:
        nvjitlink.add_data(handle, nvjitlink.InputType.PTX, data, len(data), "kernel.ptx")
        nvjitlink.complete(handle)
        log = bytearray(nvjitlink.get_info_log_size(handle))
        nvjitlink.get_info_log(handle, log)
        cubin = bytearray(nvjitlink.get_linked_cubin_size(handle))
        nvjitlink.get_linked_cubin(handle, cubin)
    finally:
        nvjitlink.destroy(handle)
    text = log.decode(errors="replace")
    fields = {"registers": r"used (\d+) registers", "smem": r"(\d+) bytes smem",
              "lmem": r"(\d+) bytes lmem", "stack": r"(\d+) stack",
              "spill_stores": r"(\d+) bytes spill stores"}
    found = {k: re.search(p, text) for k, p in fields.items()}
    if not all(found.values()):
        raise RuntimeError(f"no resource line from nvJitLink:\n{text}")
    info = {k: int(m.group(1)) for k, m in found.items()}
    if (sass := disassemble(bytes(cubin))) is not None:
        info["load_burst"] = load_burst(sass)
        info["fp64"] = len(re.findall(FP64_OPS, sass))
    return info


def disassemble(cubin: bytes) -> str | None:
    from cuda.pathfinder import find_nvidia_binary_utility

    if (nvdisasm := find_nvidia_binary_utility("nvdisasm")) is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True,
                              check=True).stdout


def load_burst(sass: str) -> int:
    """The most global loads issued one after another with no FMA or MMA between them: at
    best, the loads a thread has in flight at once. (ptxas moves a load next to its first
    use when nothing keeps it earlier, whatever order the source wrote them in.)"""
    best = run = 0
    for op in re.findall(r"\b(LDG|FFMA|HMMA)\b", sass):
        run = run + 1 if op == "LDG" else 0
        best = max(best, run)
    return best


# Double-precision arithmetic and conversions: a Python float argument or literal (1.0) in
# a kernel's fp32 expression makes it float64, a rate of 1/64 of fp32's on sm_86 and sm_89.
FP64_OPS = r"\b(?:D(?:ADD|MUL|FMA|SETP|MNMX)|F2F\.[\w.]*F64|MUFU\.\w+64\w*)\b"
# embed_rmsnorm's RoPE angles are float64 on purpose: in fp32 the angle at position 8191
# would be off by up to 5e-4 rad.
FP64_KERNELS = ("embed_rmsnorm",)


def loads_written(kernel: str, batch: int) -> int:
    """The global loads a GEMM thread must have issued together: the CUDA-core kernel's
    round of words for each of its rows; the tensor-core kernel's chunk, two 16-byte loads
    for each of its four weight rows and its batch tiles (of a two-chunk round, ptxas may
    issue the second chunk's among the first's MMAs, as it does for kernels/cuda/gemm.cu's
    tc_gemm)."""
    if kernel.startswith("tc_gemm_"):
        return 2 * (4 + tg.batch_tiles(batch))
    if not kernel.startswith("gemm_"):
        return 0
    tile = ng.batch_tile(batch)
    return ng.group_rows(tile) * ng.gemm_unroll(tile)


# sm_75 to sm_90 per block: 48 KB of static shared memory (ptxas counts 1 KB more, which the GPU
# reserves per block), 64 K registers, allocated per thread in multiples of 8.
SMEM_LIMIT, RESERVED_SMEM, REGISTER_FILE = 48 * 1024, 1024, 64 * 1024
# Kernels that keep arrays in registers (cuda.local.array): a stack frame there means NVVM
# left a loop over one rolled and the array went to local memory, traffic in the inner
# loop. (embed_rmsnorm's frame is libdevice's sin/cos argument reduction, which only
# angles beyond any context length take.)
REGISTER_ARRAYS = ("gemm_", "tc_gemm_", "paged_attention", "tc_paged_attention")


def problems(row: dict) -> list[str]:
    """What would stop or slow a launch of this kernel at its block size."""
    out = []
    if row["smem"] - RESERVED_SMEM > SMEM_LIMIT:
        out.append(f"{row['smem'] - RESERVED_SMEM} bytes of static shared memory > 48 KB")
    if -(-row["registers"] // 8) * 8 * row["threads"] > REGISTER_FILE:
        out.append(f"{row['registers']} registers x {row['threads']} threads > 64 K registers")
    if row["spill_stores"] or row["lmem"]:
        out.append(f"{row['spill_stores']} bytes of register spills, {row['lmem']} of lmem")
    if row["stack"] and row["kernel"].startswith(REGISTER_ARRAYS):
        out.append(f"a {row['stack']}-byte stack frame: a register array in local memory")
    if row.get("fp64") and row["kernel"] not in FP64_KERNELS:
        out.append(f"{row['fp64']} fp64 instructions: a float64 value in fp32 arithmetic")
    if row.get("load_burst", math.inf) < row.get("loads_written", 0):
        out.append(f"at most {row['load_burst']} global loads in flight, where the source "
                   f"issues {row['loads_written']} together")
    return out


def main(arch: str = ARCH) -> int:
    if numba.config.ENABLE_CUDASIM:
        raise SystemExit("run without NUMBA_ENABLE_CUDASIM: the simulator does not compile")
    # NOTE: device functions are compiled for the current device's compute capability
    # (numba-cuda 0.30 internals); there is none here, so it is named.
    cc = (int(arch[3:-1]), int(arch[-1]))
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    nbk.cuda = types.SimpleNamespace(to_device=np.ascontiguousarray)  # host arrays
    nbk.device_zeros = np.zeros
    cfg = get_preset("tiny")
    layout = StepLayout(max(BATCHES), cfg.max_blocks_per_seq)
    weights = nbk.upload_weights(make_weights(cfg, 0))
    meta, out_tokens = np.zeros(layout.size, np.int32), np.zeros(layout.max_batch, np.int32)
    seen = set()
    for family in kernel_families(cc):
        step = nbk.NumbaDecodeStep(cfg, weights, 8, layout, 8, family)
        for batch in BATCHES:
            for kernel, _, block, args in step.plan(meta, out_tokens, batch):
                sig = tuple(numba.typeof(a) for a in args)
                if (kernel, sig) in seen:
                    continue
                seen.add((kernel, sig))
                bounds = kernel.targetoptions.get("launch_bounds")
                ptx, _ = numba.cuda.compile_ptx(kernel.py_func, sig, cc=cc,
                                                launch_bounds=bounds)
                name = kernel.py_func.__name__
                print(json.dumps({"kernel": name, "batch": batch, "threads": block,
                                  "loads_written": loads_written(name, batch),
                                  **link_info(ptx, arch)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
