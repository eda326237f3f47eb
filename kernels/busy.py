"""Host busy work of a given length (never ``time.sleep``): the synthetic phases, the CPU
device's synthetic compute and the scheduler's extra work per request all burn it."""

from __future__ import annotations

import time

from schedbench.kernels.cpu.kernels import spin

_CHUNK = 2000  # spin iterations between clock reads (about 2 us)


def busy_until(deadline: float) -> None:
    """Burn CPU until ``perf_counter()`` reaches ``deadline``; the spin releases the GIL."""
    while time.perf_counter() < deadline:
        spin(_CHUNK)
