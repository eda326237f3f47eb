"""What a GPU step puts in device memory: seeded fp16 weights (made on the device, or uploaded
from the host's), and the check, before any of it is allocated, that a step fits."""

from __future__ import annotations

from dataclasses import dataclass

import cupy as cp
import numpy as np
from cupy.cuda import runtime

from schedbench.kernels.layout import StepLayout
from schedbench.kernels.memory import check_fits, gpu_buffer_bytes
from schedbench.kernels.model import ModelConfig, Weights, interleave_gate_up


@dataclass(frozen=True)
class DeviceWeights:
    """fp16 weights on the device; gate/up rows interleaved (g0, u0, g1, u1, ...)."""

    embed: cp.ndarray
    attn_norm: cp.ndarray
    wqkv: cp.ndarray
    wo: cp.ndarray
    mlp_norm: cp.ndarray
    w_gate_up: cp.ndarray
    w_down: cp.ndarray
    final_norm: cp.ndarray
    lm_head: cp.ndarray


def upload_weights(w: Weights) -> DeviceWeights:
    arrays = {k: cp.asarray(v.astype(np.float16)) for k, v in w.__dict__.items()}
    arrays["w_gate_up"] = cp.asarray(interleave_gate_up(w.w_gate_up).astype(np.float16))
    return DeviceWeights(**arrays)


def random_weights(cfg: ModelConfig, seed: int) -> DeviceWeights:
    """Seeded weights made on the device (an 8B model in seconds, nothing downloaded),
    scaled like ``model.make_weights``; gate/up need no interleave (all random)."""
    rng = cp.random.default_rng(seed)
    h, i, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers

    def normal(shape: tuple[int, ...], scale: float, shift: float = 0.0) -> cp.ndarray:
        if len(shape) < 3:
            return (rng.standard_normal(shape, cp.float32) * scale + shift).astype(cp.float16)
        out = cp.empty(shape, cp.float16)
        for layer in range(shape[0]):  # one layer at a time bounds the fp32 temporary
            out[layer] = rng.standard_normal(shape[1:], cp.float32) * scale + shift
        return out

    return DeviceWeights(
        embed=normal((cfg.vocab_size, h), 1.0),
        attn_norm=normal((n, h), 0.1, 1.0),
        wqkv=normal((n, cfg.qkv_size, h), h ** -0.5),
        wo=normal((n, h, cfg.q_size), cfg.q_size ** -0.5),
        mlp_norm=normal((n, h), 0.1, 1.0),
        w_gate_up=normal((n, 2 * i, h), h ** -0.5),
        w_down=normal((n, h, i), i ** -0.5),
        final_norm=normal((h,), 0.1, 1.0),
        lm_head=normal((cfg.vocab_size, h), h ** -0.5),
    )


def check_fits_on_device(cfg: ModelConfig, num_blocks: int, layout: StepLayout,
                         device_name: str) -> None:
    """Raise ConfigError unless a GPU step (fp16 weights and KV cache, and its buffers) fits
    in what new device arrays can get: the driver's free memory and the blocks CuPy's pool
    holds unused (an earlier step's, until the pool gives them back)."""
    free = runtime.memGetInfo()[0] + cp.get_default_memory_pool().free_bytes()
    check_fits(cfg, num_blocks, 2, gpu_buffer_bytes(cfg, layout), free,
               f"device memory on the {device_name}")
