"""The backend protocol: a CUDA stream, abstracted.

The engine sees only these types. Semantics are CUDA's: work enqueued on a stream runs in
order and asynchronously; an event completes when the stream reaches it; ``Stream.wait``
orders one stream after an event of another.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from schedbench.kernels.clocks import GpuClocks
from schedbench.kernels.layout import StepLayout
from schedbench.kernels.model import ModelConfig

KERNELS_KEPT = 1 << 16


class Stream(ABC):
    @abstractmethod
    def wait(self, event: Event) -> None:
        """Work enqueued after this call starts only once ``event`` has completed."""

    @abstractmethod
    def synchronize(self) -> None:
        """Block the host until everything enqueued so far has run."""

    def take_kernels(self, start: Event, end: Event) -> np.ndarray | None:
        """The (start, end) of each kernel this stream ran between two of its completed
        events, in seconds since ``start``, each kernel handed out once; None where the
        backend cannot know them (the figures then take the events' span as busy). A stream
        keeps at least ``KERNELS_KEPT`` until they are taken."""
        return None


class Event(ABC):
    @abstractmethod
    def record(self, stream: Stream) -> None: ...

    @abstractmethod
    def synchronize(self) -> None: ...

    @abstractmethod
    def query(self) -> bool:
        """True once the most recent ``record`` has been reached."""

    @abstractmethod
    def elapsed_ms(self, later: Event) -> float:
        """Device time from this event to ``later``; both must have completed."""


class DecodeStep(ABC):
    """One step's device work: reads the packed metadata, writes one token per row.

    The step owns the device state that lives across steps: weights, the paged KV cache
    and the token buffer indexed by request slot.
    """

    layout: StepLayout
    kernels_per_step: int
    # Host busy work after each kernel launch (the synthetic --launch-us), in seconds: any
    # backend made launch-bound on purpose. A graph's replay is one launch.
    launch_gap_s: float = 0.0
    # One slot of the token buffer and one KV block beyond the scheduler's: the padding
    # rows of a graph bucket read and write only there.
    pad_slot: int
    pad_block: int

    @abstractmethod
    def launch(self, meta: Any, out_tokens: Any, batch_size: int, stream: Stream) -> None:
        """Enqueue every kernel of one step on ``stream`` and return at once."""


class Graph(ABC):
    @abstractmethod
    def launch(self, stream: Stream) -> None: ...


class Backend(ABC):
    name: str
    supports_graphs = False
    # Where device busy time comes from: "worker" (the CPU device stamps every kernel),
    # "cupti" (NVIDIA's activity records) or "span" (events only: idle between a step's
    # kernels is counted as busy).
    busy_source = "span"
    # How far its kernel stamps and its events' times may disagree, in seconds: 0 where one
    # clock stamps both (the CPU device); CUDA events resolve about 0.5 us (cupti.py).
    kernel_clock_error_s = 0.0

    @property
    @abstractmethod
    def device_name(self) -> str: ...

    @abstractmethod
    def stream(self) -> Stream: ...

    @abstractmethod
    def event(self) -> Event: ...

    @abstractmethod
    def empty(self, size: int, dtype: np.dtype | type) -> Any:
        """A 1-D device buffer."""

    @abstractmethod
    def pinned(self, size: int, dtype: np.dtype | type) -> np.ndarray:
        """A 1-D page-locked host buffer, the only kind async copies use."""

    @abstractmethod
    def copy_to_device(self, dst: Any, src: np.ndarray, stream: Stream) -> None: ...

    @abstractmethod
    def copy_to_host(self, dst: np.ndarray, src: Any, stream: Stream) -> None: ...

    @abstractmethod
    def decode_step(self, cfg: ModelConfig, seed: int, num_blocks: int, layout: StepLayout,
                    num_slots: int) -> DecodeStep: ...

    @abstractmethod
    def spin_step(self, vocab_size: int, compute_ms: float, layout: StepLayout,
                  num_slots: int) -> DecodeStep:
        """The synthetic step: device busy for ``compute_ms``, then a token per row."""

    def capture(self, step: DecodeStep, meta: Any, out_tokens: Any, batch_size: int,
                stream: Stream) -> Graph:
        raise NotImplementedError(f"backend {self.name!r} cannot capture CUDA graphs")

    def versions(self) -> dict[str, str]:
        return {}

    def clocks(self) -> tuple[GpuClocks | None, str]:
        """NVML's sampler of this backend's GPU, or None and why not ("" on the CPU)."""
        return None, ""

    @abstractmethod
    def close(self) -> None:
        """Release threads and device memory; the backend is unusable afterwards."""
