"""The packed int32 metadata of one step, shared by the scheduler and every backend.

One buffer, one host->device copy per step: ``[input_ids | slots | positions | block_tables]``.
``input_ids[i] >= 0`` is a prompt token sent from the host; ``-1`` means "the token this
request's previous step sampled", read on the device from the token buffer at ``slots[i]``
(the future-token map: no host round trip between two steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FROM_DEVICE = -1


@dataclass(frozen=True)
class StepLayout:
    max_batch: int
    max_blocks: int

    @property
    def size(self) -> int:
        return self.max_batch * (3 + self.max_blocks)

    def views(self, buf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(input_ids, slots, positions, block_tables)`` views into a packed buffer."""
        b = self.max_batch
        return (buf[:b], buf[b:2 * b], buf[2 * b:3 * b],
                buf[3 * b:].reshape(b, self.max_blocks))


def empty_meta(layout: StepLayout) -> np.ndarray:
    return np.zeros(layout.size, dtype=np.int32)
