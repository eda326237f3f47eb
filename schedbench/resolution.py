"""How many digits of a figure mean something: what asv files and prints."""

from __future__ import annotations

import math

# The spread between processes is 1-11 % of a step here (bench_overhead's note), a kernel's
# event-timed duration resolves to about 0.5 us: a fifth significant digit is noise, and
# asv would otherwise print all sixteen.
DIGITS = 4


def significant(value: float, digits: int = DIGITS) -> float:
    """``value`` rounded to ``digits`` significant digits; NaN and infinities as they are."""
    if not math.isfinite(value) or value == 0:
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))
