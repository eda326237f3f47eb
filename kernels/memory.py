"""Whether a decode step fits in memory, checked before any of it is allocated: a preset or
KV budget too large is named in one line, not found by an out-of-memory error (or the OOM
killer) halfway through the weights."""

from __future__ import annotations

from schedbench.kernels.cuda.calls import AttentionScratch
from schedbench.kernels.errors import ConfigError
from schedbench.kernels.layout import StepLayout
from schedbench.kernels.model import ModelConfig


def kv_cache_bytes(cfg: ModelConfig, num_blocks: int, itemsize: int) -> int:
    """K and V of every layer, the spare padding block included."""
    return (num_blocks + 1) * cfg.block_size * cfg.kv_bytes_per_token(itemsize)


def gpu_buffer_bytes(cfg: ModelConfig, layout: StepLayout) -> int:
    """The GPU steps' per-row buffers, those of the logits and the attention's partials
    (the others are smaller than the logits together)."""
    b = layout.max_batch
    return b * cfg.vocab_size * 4 + AttentionScratch.nbytes(cfg, b,
                                                            layout.max_blocks * cfg.block_size)


def available_host_bytes() -> int | None:
    """MemAvailable of /proc/meminfo; None where there is no such file."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_fits(cfg: ModelConfig, num_blocks: int, itemsize: int, buffers: int,
               free: int | None, where: str) -> None:
    """Raise ConfigError unless the weights and KV cache (``itemsize`` bytes an element) and
    ``buffers`` fit in ``free`` bytes of ``where``; ``free`` None skips the check."""
    weights, kv = cfg.param_count * itemsize, kv_cache_bytes(cfg, num_blocks, itemsize)
    need = weights + kv + buffers
    if free is None or need <= free:
        return
    fix = "a smaller preset" if weights > kv else "lower --kv-blocks or the largest batch size"
    raise ConfigError(f"preset {cfg.name!r} needs {_size(need)} of {where}: {_size(weights)} "
                      f"of weights, {_size(kv)} of KV cache ({num_blocks} blocks) and "
                      f"{_size(buffers)} of buffers, and {_size(free)} is free; {fix}")
