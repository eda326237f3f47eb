"""The one compatibility shim numba-cuda needs, applied before it compiles anything.

numba-cuda 0.30 still calls ``np.row_stack``, which NumPy 2.5 removed (it was an alias of
``np.vstack`` since NumPy 1.x). Seen on the lent H200s (numpy 2.5.2, numba-cuda 0.30.4).
"""

from __future__ import annotations

import numpy as np


def apply() -> None:
    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack
