"""The decode step's kernels for the CPU "device", as Numba ``nogil`` functions.

They release the GIL for their whole run, so the scheduler thread really runs beside them.
Every row is computed by the same instruction sequence whatever the batch size (no
batch-dependent reduction order), so a request's tokens do not depend on its batch-mates:
sequential and overlapped loops agree bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_JIT = {"nogil": True, "cache": True}
# Reassociation lets LLVM vectorise the dot products; the order is still fixed per row.
_JIT_DOT = {**_JIT, "fastmath": {"reassoc", "nsz", "contract"}}


@njit(**_JIT)
def embed(input_ids, slots, token_buf, table, x):  # pragma: no cover - compiled
    for i in range(x.shape[0]):
        tok = input_ids[i] if input_ids[i] >= 0 else token_buf[slots[i]]
        x[i, :] = table[tok]


@njit(**_JIT_DOT)
def rms_norm(x, w, eps, out):  # pragma: no cover - compiled
    n = x.shape[1]
    for i in range(x.shape[0]):
        ss = np.float32(0.0)
        for j in range(n):
            ss += x[i, j] * x[i, j]
        scale = np.float32(1.0) / np.float32(math.sqrt(ss / n + eps))
        for j in range(n):
            out[i, j] = x[i, j] * scale * w[j]


@njit(**_JIT_DOT)
def linear(x, w, out, accumulate):  # pragma: no cover - compiled
    """``out (+)= x @ w.T`` with ``w[N, K]``: each weight row is read once per step."""
    for n in range(w.shape[0]):
        wn = w[n]
        for i in range(x.shape[0]):
            acc = np.float32(0.0)
            for k in range(w.shape[1]):
                acc += x[i, k] * wn[k]
            out[i, n] = out[i, n] + acc if accumulate else acc


@njit(**_JIT)
def rope_kv_append(qkv, positions, block_tables, k_cache, v_cache, num_heads, num_kv_heads,
                   head_dim, theta):  # pragma: no cover - compiled
    """RoPE on q and k in place, then k and v into the paged cache at each position."""
    half = head_dim // 2
    bs = k_cache.shape[1]
    for i in range(qkv.shape[0]):
        pos = positions[i]
        for j in range(half):
            angle = pos * theta ** (-j / half)
            c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
            for h in range(num_heads + num_kv_heads):
                base = h * head_dim
                x1, x2 = qkv[i, base + j], qkv[i, base + j + half]
                qkv[i, base + j] = x1 * c - x2 * s
                qkv[i, base + j + half] = x2 * c + x1 * s
        block, off = block_tables[i, pos // bs], pos % bs
        k0 = num_heads * head_dim
        v0 = k0 + num_kv_heads * head_dim
        for h in range(num_kv_heads):
            for j in range(head_dim):
                k_cache[block, off, h, j] = qkv[i, k0 + h * head_dim + j]
                v_cache[block, off, h, j] = qkv[i, v0 + h * head_dim + j]


@njit(**_JIT_DOT)
def paged_attention(qkv, positions, block_tables, k_cache, v_cache, num_heads, num_kv_heads,
                    head_dim, scores, out):  # pragma: no cover - compiled
    """Each row attends over its own ``positions[i] + 1`` cached tokens (GQA)."""
    bs = k_cache.shape[1]
    group = num_heads // num_kv_heads
    scale = np.float32(1.0 / math.sqrt(head_dim))
    for i in range(qkv.shape[0]):
        n = positions[i] + 1
        for h in range(num_heads):
            g = h // group
            q = qkv[i, h * head_dim:(h + 1) * head_dim]
            m = np.float32(-np.inf)
            for t in range(n):
                k = k_cache[block_tables[i, t // bs], t % bs, g]
                s = np.float32(0.0)
                for j in range(head_dim):
                    s += q[j] * k[j]
                scores[t] = s * scale
                m = max(m, scores[t])
            denom = np.float32(0.0)
            for t in range(n):
                scores[t] = np.float32(math.exp(scores[t] - m))
                denom += scores[t]
            o = out[i, h * head_dim:(h + 1) * head_dim]
            o[:] = 0.0
            for t in range(n):
                v = v_cache[block_tables[i, t // bs], t % bs, g]
                p = scores[t] / denom
                for j in range(head_dim):
                    o[j] += p * v[j]


@njit(**_JIT)
def silu_mul(gate_up, out):  # pragma: no cover - compiled
    inter = out.shape[1]
    for i in range(out.shape[0]):
        for j in range(inter):
            g = gate_up[i, j]
            out[i, j] = g / (np.float32(1.0) + np.float32(math.exp(-g))) * gate_up[i, inter + j]


@njit(**_JIT)
def argmax_tokens(logits, slots, token_buf, out_tokens):  # pragma: no cover - compiled
    """Greedy sampling: first maximum wins; the token goes to the output and the slot."""
    for i in range(logits.shape[0]):
        best = 0
        for v in range(1, logits.shape[1]):
            if logits[i, v] > logits[i, best]:
                best = v
        out_tokens[i] = best
        token_buf[slots[i]] = best


@njit(**_JIT)
def decode_step(input_ids, slots, positions, block_tables, token_buf, out_tokens,
                embed_w, attn_norm, wqkv, wo, mlp_norm, w_gate_up, w_down, final_norm, lm_head,
                k_cache, v_cache, x, h, qkv, attn, gate_up, act, logits, scores,
                num_heads, num_kv_heads, head_dim, eps, theta):  # pragma: no cover - compiled
    """One whole decode step: every stage of DESIGN.md, in order, without the GIL."""
    embed(input_ids, slots, token_buf, embed_w, x)
    for layer in range(wqkv.shape[0]):
        rms_norm(x, attn_norm[layer], eps, h)
        linear(h, wqkv[layer], qkv, False)
        rope_kv_append(qkv, positions, block_tables, k_cache[layer], v_cache[layer],
                       num_heads, num_kv_heads, head_dim, theta)
        paged_attention(qkv, positions, block_tables, k_cache[layer], v_cache[layer],
                        num_heads, num_kv_heads, head_dim, scores, attn)
        linear(attn, wo[layer], x, True)
        rms_norm(x, mlp_norm[layer], eps, h)
        linear(h, w_gate_up[layer], gate_up, False)
        silu_mul(gate_up, act)
        linear(act, w_down[layer], x, True)
    rms_norm(x, final_norm, eps, h)
    linear(h, lm_head, logits, False)
    argmax_tokens(logits, slots, token_buf, out_tokens)


@njit(**_JIT)
def spin(iterations):  # pragma: no cover - compiled
    """Arithmetic the compiler cannot remove; the caller loops on a clock around it."""
    acc = 1.0
    for _ in range(iterations):
        acc = acc * 1.0000001 + 1e-9
    return acc


@njit(**_JIT)
def synthetic_tokens(input_ids, slots, positions, token_buf, out_tokens,
                     vocab_size):  # pragma: no cover - compiled
    """The synthetic step's output: a token that depends on the input, so streams can differ."""
    for i in range(out_tokens.shape[0]):
        tok = input_ids[i] if input_ids[i] >= 0 else token_buf[slots[i]]
        out_tokens[i] = (tok * 31 + positions[i] + 1) % vocab_size
        token_buf[slots[i]] = out_tokens[i]
