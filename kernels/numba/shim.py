"""The compatibility shims numba-cuda needs, applied before it compiles anything.

- numba-cuda 0.30 still calls ``np.row_stack``, which NumPy 2.5 removed (it was an alias of
  ``np.vstack`` since NumPy 1.x). Seen on the lent H200s (numpy 2.5.2, numba-cuda 0.30.4).
- Its CUDA simulator gives a block's threads one shared array per call site by looking the
  site up in a dict and filling it on a miss, without a lock: two threads that miss together
  each make an array of their own, and a block-wide reduction then reads uninitialised
  memory. Seen as a rare wrong RMSNorm in CI's simulator tests (numba-cuda 0.30.4); more
  frequent with ``sys.setswitchinterval(1e-6)``. The lookup is made under a lock.
"""

from __future__ import annotations

import sys
import threading

import numpy as np


def apply() -> None:
    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack
    from numba import config  # NOTE: after row_stack, for numba-cuda's own imports

    if config.ENABLE_CUDASIM:
        _lock_simulated_shared_arrays()


def _lock_simulated_shared_arrays() -> None:
    from numba.cuda.simulator import kernelapi

    shared = kernelapi.FakeCUDAShared
    if getattr(shared.array, "locked", False):
        return
    unlocked, lock = shared.array, threading.Lock()

    def array(self, shape, dtype, alignment=None):  # FakeCUDAShared.array's signature
        if shape == 0 or alignment is not None:  # dynamic shared memory, or refused
            return unlocked(self, shape, dtype, alignment)
        caller = sys._getframe(1)  # the site, as numba keys it: (file, line) of the call
        site = (caller.f_code.co_filename, caller.f_lineno)
        if isinstance(dtype, kernelapi.types.Type):
            dtype = kernelapi.numpy_support.as_dtype(dtype)
        with lock:
            if (arr := self._allocations.get(site)) is None:
                arr = self._allocations[site] = np.empty(shape, dtype)
        return arr

    array.locked = True
    shared.array = array
