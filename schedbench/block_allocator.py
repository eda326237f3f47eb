"""The paged KV-cache block allocator: a free list with per-request reservations."""

from __future__ import annotations

from schedbench.kernels.errors import ConfigError


class BlockAllocator:
    """Hands out KV blocks one at a time, within reservations made at admission.

    A request reserves every block it can ever need when it is admitted and takes them
    one by one as its sequence grows, so a running request never finds the cache full.
    """

    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            raise ConfigError(f"KV budget of {num_blocks} blocks: need at least 1")
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))
        self._reserved = 0  # reserved but not yet allocated

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def free_blocks(self) -> list[int]:
        return list(self._free)

    @property
    def reserved(self) -> int:
        """Blocks promised to admitted requests and not yet handed out."""
        return self._reserved

    @property
    def num_unreserved(self) -> int:
        return len(self._free) - self._reserved

    def reserve(self, n: int) -> bool:
        if n > self.num_unreserved:
            return False
        self._reserved += n
        return True

    def allocate(self) -> int:
        """One block out of an existing reservation."""
        if self._reserved <= 0:
            raise RuntimeError("allocate() without a reservation")
        self._reserved -= 1
        return self._free.pop()

    def release(self, blocks: list[int], unused_reservation: int) -> None:
        self._free.extend(blocks)
        self._reserved -= unused_reservation

    def check_all_free(self) -> None:
        """Raise unless every block is back exactly once and nothing is reserved."""
        if sorted(self._free) != list(range(self.num_blocks)) or self._reserved:
            raise AssertionError(f"allocator leaked: {self.num_free}/{self.num_blocks} free, "
                                 f"{self._reserved} reserved")
