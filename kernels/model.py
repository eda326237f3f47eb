"""Model shapes (presets) and seeded random weights: nothing is downloaded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from schedbench.kernels.errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a Llama-style decoder. Weights are ``[out_features, in_features]``."""

    name: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_context: int
    block_size: int = 16
    rms_eps: float = 1e-5
    rope_theta: float = 500000.0
    eos_token_id: int = 0

    def __post_init__(self) -> None:
        for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                      "head_dim", "intermediate_size", "max_context", "block_size"):
            if getattr(self, field) <= 0:
                raise ConfigError(f"model {self.name!r}: {field} must be > 0, "
                                  f"got {getattr(self, field)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"model {self.name!r}: num_heads={self.num_heads} is not a "
                              f"multiple of num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"model {self.name!r}: head_dim={self.head_dim} must be even (RoPE)")
        if not 0 <= self.eos_token_id < self.vocab_size:
            raise ConfigError(f"model {self.name!r}: eos_token_id={self.eos_token_id} is outside "
                              f"the vocabulary [0, {self.vocab_size})")

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def qkv_size(self) -> int:
        return self.q_size + 2 * self.kv_size

    @property
    def max_blocks_per_seq(self) -> int:
        return -(-self.max_context // self.block_size)

    @property
    def param_count(self) -> int:
        h, i = self.hidden_size, self.intermediate_size
        per_layer = h * self.qkv_size + self.q_size * h + h * 2 * i + i * h + 2 * h
        return 2 * self.vocab_size * h + self.num_layers * per_layer + h

    def kv_bytes_per_token(self, itemsize: int) -> int:
        return 2 * self.num_layers * self.kv_size * itemsize


PRESETS: dict[str, ModelConfig] = {
    # Small enough for a CPU "device" and the CUDA simulator, same structure as the others.
    "tiny": ModelConfig(name="tiny", vocab_size=2048, hidden_size=256, num_layers=2,
                        num_heads=8, num_kv_heads=2, head_dim=32, intermediate_size=768,
                        max_context=512, rope_theta=10000.0),
    # For the CUDA simulator and smoke tests: every stage, a few hundred thousand weights.
    "micro": ModelConfig(name="micro", vocab_size=128, hidden_size=64, num_layers=1,
                         num_heads=2, num_kv_heads=1, head_dim=32, intermediate_size=128,
                         max_context=64, rope_theta=10000.0),
    # Llama-3.2-1B shapes.
    "llama-1b": ModelConfig(name="llama-1b", vocab_size=128256, hidden_size=2048, num_layers=16,
                            num_heads=32, num_kv_heads=8, head_dim=64, intermediate_size=8192,
                            max_context=8192),
    # Llama-3-8B shapes.
    "llama3-8b": ModelConfig(name="llama3-8b", vocab_size=128256, hidden_size=4096,
                             num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
                             intermediate_size=14336, max_context=8192),
}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of "
                          f"{', '.join(sorted(PRESETS))}") from None


@dataclass(frozen=True)
class Weights:
    """Every weight of the model; per-layer tensors are stacked on a leading layer axis."""

    embed: np.ndarray  # [V, H]
    attn_norm: np.ndarray  # [L, H]
    wqkv: np.ndarray  # [L, QKV, H]
    wo: np.ndarray  # [L, H, Q]
    mlp_norm: np.ndarray  # [L, H]
    w_gate_up: np.ndarray  # [L, 2I, H]  gate rows first, then up rows
    w_down: np.ndarray  # [L, H, I]
    final_norm: np.ndarray  # [H]
    lm_head: np.ndarray  # [V, H]

    def astype(self, dtype: np.dtype | type) -> Weights:
        return Weights(**{k: v.astype(dtype) for k, v in self.__dict__.items()})


def make_weights(cfg: ModelConfig, seed: int, dtype: np.dtype | type = np.float32,
                 empty: Callable[[tuple[int, ...]], np.ndarray] | None = None) -> Weights:
    """Seeded random weights scaled like a trained model's (unit-variance activations).
    ``empty(shape)``, when given, makes each float32 array the weights are drawn into (the
    CPU backend's start on a cache line); the values do not depend on it."""
    rng = np.random.default_rng(seed)
    h, i, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers

    def normal(*shape: int) -> np.ndarray:
        out = None if empty is None else empty(shape)
        return rng.standard_normal(shape, dtype=np.float32, out=out)

    def linear(*shape: int) -> np.ndarray:
        w = normal(*shape)
        # NOTE: in place: under NumPy 2 `w / np.sqrt(n)` is float64 (NEP 50), 30 GB for
        # llama3-8b's gate/up. The float32 result is the same, rounded once from float64.
        w /= np.sqrt(shape[-1])
        return w.astype(dtype, copy=False)

    def norm(*shape: int) -> np.ndarray:
        w = normal(*shape)
        w *= 0.1
        w += 1.0
        return w.astype(dtype, copy=False)

    return Weights(
        embed=normal(cfg.vocab_size, h).astype(dtype, copy=False),
        attn_norm=norm(n, h),
        wqkv=linear(n, cfg.qkv_size, h),
        wo=linear(n, h, cfg.q_size),
        mlp_norm=norm(n, h),
        w_gate_up=linear(n, 2 * i, h),
        w_down=linear(n, h, i),
        final_norm=norm(h),
        lm_head=linear(cfg.vocab_size, h),
    )


def interleave_gate_up(w: np.ndarray) -> np.ndarray:
    """``[L, 2I, H]`` as [gate rows; up rows] -> rows (g0, u0, g1, u1, ...): the GPU kernels'
    layout, where the thread or warp that computes a gate row also has its up row, so the
    SiLU-mul fuses into the projection."""
    layers, two_i, hidden = w.shape
    half = two_i // 2
    return np.stack([w[:, :half], w[:, half:]], axis=2).reshape(layers, two_i, hidden)
