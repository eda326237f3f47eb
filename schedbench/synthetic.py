"""Synthetic mode: CPU phases as busy work of a given length (never ``time.sleep``)."""

from __future__ import annotations

from dataclasses import dataclass

from schedbench.kernels.errors import ConfigError


@dataclass(frozen=True)
class Synthetic:
    schedule_ms: float = 0.0
    compute_ms: float = 0.0
    postprocess_ms: float = 0.0

    def __post_init__(self) -> None:
        flags = {"schedule_ms": "--scheduling-ms", "compute_ms": "--compute-ms",
                 "postprocess_ms": "--postprocess-ms"}
        for name, flag in flags.items():
            v = getattr(self, name)
            if not 0.0 <= v <= 10_000.0:
                raise ConfigError(f"{flag} {v}: must be in [0, 10000] ms")

