"""Compile every Numba kernel of the decode step for sm_90 without a GPU, and report what
ptxas allots it.

Run as ``python -m tests.numba_ptx`` in a process without the CUDA simulator (the test in
test_numba_compile.py does): the simulator never compiles, so a kernel that fails to type
or lower for a real GPU, or asks for more registers or shared memory than a launch of its
block size can get, would otherwise pass CI and fail on the first GPU. The argument types
and block sizes are those of the backend's own plan, built over host arrays, for batch 1
and 3. NVVM makes the PTX, nvJitLink assembles it (both from pip wheels). Prints one JSON
object per kernel and signature.
"""

from __future__ import annotations

import json
import re
import sys
import types

import numba
import numba.cuda.dispatcher as dispatcher
import numpy as np

from kernels import numba_backend as nbk
from kernels.layout import StepLayout
from schedbench.model import get_preset, make_weights

ARCH = "sm_90"


def link_info(ptx: str) -> dict[str, int]:
    """ptxas's resource line for the one kernel in ``ptx``, through nvJitLink."""
    from cuda.bindings import nvjitlink

    data = ptx.encode()
    handle = nvjitlink.create(2, [f"-arch={ARCH}", "-verbose"])
    try:
        nvjitlink.add_data(handle, nvjitlink.InputType.PTX, data, len(data), "kernel.ptx")
        nvjitlink.complete(handle)
        log = bytearray(nvjitlink.get_info_log_size(handle))
        nvjitlink.get_info_log(handle, log)
    finally:
        nvjitlink.destroy(handle)
    text = log.decode(errors="replace")
    fields = {"registers": r"used (\d+) registers", "smem": r"(\d+) bytes smem",
              "lmem": r"(\d+) bytes lmem", "spill_stores": r"(\d+) bytes spill stores"}
    found = {k: re.search(p, text) for k, p in fields.items()}
    if not all(found.values()):
        raise RuntimeError(f"no resource line from nvJitLink:\n{text}")
    return {k: int(m.group(1)) for k, m in found.items()}


# sm_90 per block: 48 KB of static shared memory (ptxas counts 1 KB more, which the GPU
# reserves per block), 64 K registers, allocated per thread in multiples of 8.
SMEM_LIMIT, RESERVED_SMEM, REGISTER_FILE = 48 * 1024, 1024, 64 * 1024


def problems(row: dict) -> list[str]:
    """What would stop or slow a launch of this kernel at its block size."""
    out = []
    if row["smem"] - RESERVED_SMEM > SMEM_LIMIT:
        out.append(f"{row['smem'] - RESERVED_SMEM} bytes of static shared memory > 48 KB")
    if -(-row["registers"] // 8) * 8 * row["threads"] > REGISTER_FILE:
        out.append(f"{row['registers']} registers x {row['threads']} threads > 64 K registers")
    if row["spill_stores"] or row["lmem"]:
        out.append(f"{row['spill_stores']} bytes of register spills, {row['lmem']} of lmem")
    return out


def main() -> int:
    if numba.config.ENABLE_CUDASIM:
        raise SystemExit("run without NUMBA_ENABLE_CUDASIM: the simulator does not compile")
    # NOTE: device functions are compiled for the current device's compute capability
    # (numba-cuda 0.30 internals); there is none here, so it is named.
    cc = (int(ARCH[3]), int(ARCH[4]))
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    nbk.cuda = types.SimpleNamespace(to_device=np.ascontiguousarray)  # host arrays
    cfg = get_preset("tiny")
    layout = StepLayout(4, cfg.max_blocks_per_seq)
    step = nbk.NumbaDecodeStep(cfg, nbk.upload_weights(make_weights(cfg, 0)), 8, layout, 8)
    seen = set()
    for batch in (1, 3):
        for kernel, _, block, args in step.plan(np.zeros(layout.size, np.int32),
                                                np.zeros(4, np.int32), batch):
            sig = tuple(numba.typeof(a) for a in args)
            if (kernel, sig) in seen:
                continue
            seen.add((kernel, sig))
            ptx, _ = numba.cuda.compile_ptx(kernel.py_func, sig, cc=cc)
            print(json.dumps({"kernel": kernel.py_func.__name__, "threads": block,
                              **link_info(ptx)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
