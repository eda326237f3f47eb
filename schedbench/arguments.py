"""Command-line pieces shared by ``python -m schedbench`` and the suites run directly."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

from schedbench.kernels.errors import ConfigError


def int_list(text: str) -> tuple[int, ...]:
    """``"1,4,16"`` -> ``(1, 4, 16)``; ``""`` -> ``()``. A value given twice is an error: it
    would run twice and print two rows for one batch size (or context)."""
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        msg = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if twice := sorted({v for v in values if values.count(v) > 1}):
        raise argparse.ArgumentTypeError(f"{', '.join(map(str, twice))} given twice in {text!r}")
    return values


def int_list_text(values: tuple[int, ...] | list[int]) -> str:
    """What ``int_list`` reads back: ``(1, 4, 16)`` -> ``"1,4,16"``, for a default in help."""
    return ",".join(map(str, values))


def int_range(text: str) -> tuple[int, int]:
    """``"4:32"`` -> ``(4, 32)``; ``"8"`` -> ``(8, 8)``."""
    lo, _, hi = text.partition(":")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX integers, got {text!r}") from None


@contextmanager
def reported(parser: argparse.ArgumentParser) -> Iterator[None]:
    """A ConfigError raised inside becomes the parser's one-line error and exit code 2."""
    try:
        yield
    except ConfigError as exc:
        parser.error(str(exc))
