"""Numba kernels compiled ahead and launched with arguments packed once (GPU only).

``kernel[grid, block, stream](*args)`` resolves the argument types, finds the compiled
overload and marshals every array into its (meminfo, parent, size, itemsize, data, shape,
strides) fields on every call: about 30 us of host time on an H200, before the driver
sees anything. A decode step repeats the same launches every step, so each is prepared
once: compiled for its argument types (``Dispatcher.specialize``), marshalled by Numba's
own ``_prepare_args``, and packed for ``cuLaunchKernel`` (``schedbench.kernels.cupy.launch``). The
simulator has no driver to launch with; there the step uses the dispatcher.

NOTE: ``_prepare_args`` and ``_codelibrary`` are numba-cuda internals (checked against
0.30.x); ``prepare`` fails loudly, naming them, if a release moves them.
"""

from __future__ import annotations

import ctypes

from schedbench.kernels.cupy.launch import Launch


def prepare(dispatcher, grid: int | tuple[int, ...], block: int, args: tuple) -> Launch:
    """``dispatcher[grid, block](*args)`` as a packed ``Launch``."""
    kernel = next(iter(dispatcher.specialize(*args).overloads.values()))
    try:
        if kernel.cooperative or kernel.debug:
            raise ValueError("cooperative and debug kernels need Numba's own launch")
        fields: list = []
        for ty, val in zip(kernel.argument_types, args, strict=True):
            kernel._prepare_args(ty, val, 0, [], fields)
        handle = int(kernel._codelibrary.get_cufunc().handle)
    except (AttributeError, TypeError) as e:
        raise RuntimeError(f"numba-cuda internals changed ({e}); kernels/numba/launch.py "
                           f"supports numba-cuda 0.30") from e
    # NOTE: bare ints are the intptr-sized array fields (Numba passes them the same way)
    values = [ctypes.c_ssize_t(v) if isinstance(v, int) else v for v in fields]
    return Launch.from_values(handle, grid, block, values, args, dispatcher.py_func.__name__)
