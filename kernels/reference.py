"""Float64 NumPy reference of one decode step, paged KV cache included (tests only).

Every backend's kernels are checked against these functions. Shapes follow the kernels:
``qkv`` rows are ``[q heads | k heads | v heads]``, KV caches are
``[num_blocks, block_size, num_kv_heads, head_dim]`` per layer.
"""

from __future__ import annotations

import numpy as np

from schedbench.kernels.model import ModelConfig, Weights


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_angles(positions: np.ndarray, pairs: int, theta: float) -> np.ndarray:
    """``[B, pairs]``: the angle of each rotate-half RoPE pair at each position."""
    inv_freq = theta ** (-np.arange(pairs, dtype=np.float64) / pairs)
    return positions.astype(np.float64)[:, None] * inv_freq[None, :]


def rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Rotate-half RoPE (Llama/NeoX) on ``x[B, heads, head_dim]``."""
    half = x.shape[-1] // 2
    angle = rope_angles(positions, half, theta)
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def silu_mul(gate_up: np.ndarray) -> np.ndarray:
    g, u = np.split(gate_up.astype(np.float64), 2, axis=-1)
    return g / (1.0 + np.exp(-g)) * u


def kv_append(k_cache: np.ndarray, v_cache: np.ndarray, k: np.ndarray, v: np.ndarray,
              positions: np.ndarray, block_tables: np.ndarray) -> None:
    bs = k_cache.shape[1]
    for i, pos in enumerate(positions):
        block = block_tables[i, pos // bs]
        k_cache[block, pos % bs] = k[i]
        v_cache[block, pos % bs] = v[i]


def rope_kv_append(cfg: ModelConfig, qkv: np.ndarray, positions: np.ndarray,
                   block_tables: np.ndarray, k_cache: np.ndarray,
                   v_cache: np.ndarray) -> np.ndarray:
    """RoPE on q and k of ``qkv[B, QKV]``, k and v into the caches; returns q ``[B, H, D]``."""
    b, d = len(qkv), cfg.head_dim
    qkv = qkv.astype(np.float64)
    q = rope(qkv[:, :cfg.q_size].reshape(b, cfg.num_heads, d), positions, cfg.rope_theta)
    k = rope(qkv[:, cfg.q_size:cfg.q_size + cfg.kv_size].reshape(b, cfg.num_kv_heads, d),
             positions, cfg.rope_theta)
    v = qkv[:, cfg.q_size + cfg.kv_size:].reshape(b, cfg.num_kv_heads, d)
    kv_append(k_cache, v_cache, k, v, positions, block_tables)
    return q


def paged_attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray,
                    block_tables: np.ndarray, seq_lens: np.ndarray) -> np.ndarray:
    """Decode attention of ``q[B, H, D]`` over each sequence's own blocks (GQA)."""
    b, nh, d = q.shape
    bs, kvh = k_cache.shape[1], k_cache.shape[2]
    group = nh // kvh
    out = np.empty((b, nh, d), dtype=np.float64)
    for i in range(b):
        n = int(seq_lens[i])
        pos = np.arange(n)
        blocks = block_tables[i, pos // bs]
        k = k_cache[blocks, pos % bs].astype(np.float64)  # [n, kvh, d]
        v = v_cache[blocks, pos % bs].astype(np.float64)
        for h in range(nh):
            s = k[:, h // group] @ q[i, h].astype(np.float64) / np.sqrt(d)
            p = np.exp(s - s.max())
            out[i, h] = (p / p.sum()) @ v[:, h // group]
    return out


def decode_step(cfg: ModelConfig, w: Weights, tokens: np.ndarray, positions: np.ndarray,
                block_tables: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray) -> np.ndarray:
    """Logits ``[B, V]`` of one decode step; appends this step's K/V to the caches.

    ``k_cache``/``v_cache`` are ``[layers, num_blocks, block_size, kv_heads, head_dim]``.
    """
    b = len(tokens)
    x = w.embed[tokens].astype(np.float64)
    for layer in range(cfg.num_layers):
        h = rms_norm(x, w.attn_norm[layer], cfg.rms_eps)
        qkv = h @ w.wqkv[layer].T.astype(np.float64)
        q = rope_kv_append(cfg, qkv, positions, block_tables, k_cache[layer], v_cache[layer])
        attn = paged_attention(q, k_cache[layer], v_cache[layer], block_tables, positions + 1)
        x = x + attn.reshape(b, -1) @ w.wo[layer].T.astype(np.float64)
        h = rms_norm(x, w.mlp_norm[layer], cfg.rms_eps)
        x = x + silu_mul(h @ w.w_gate_up[layer].T.astype(np.float64)) @ w.w_down[layer].T
    return rms_norm(x, w.final_norm, cfg.rms_eps) @ w.lm_head.T.astype(np.float64)


def greedy(logits: np.ndarray) -> np.ndarray:
    """Greedy sampling; ties go to the lowest token id, as in every backend."""
    return np.argmax(logits, axis=-1).astype(np.int32)
