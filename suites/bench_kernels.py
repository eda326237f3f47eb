"""Each decode kernel's device time, achieved GB/s and % of the copy bandwidth measured in
the same run; the projection kernel beside cuBLAS (``cupy.matmul``) on the same shapes.

asv: ``asv run --python=same --bench bench_kernels`` (skipped without a GPU).
Directly: ``python suites/bench_kernels.py [--preset llama3-8b] [--batch-sizes 1,4,16]``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from kernels.registry import gpu_unavailable_reason
from schedbench.model import get_preset
from schedbench.report import format_table, write_json

PRESET = "llama3-8b"
BATCH_SIZES = [1, 4, 16]
CONTEXTS = [2048, 4096, 8192]
PROJECTIONS = ("qkv", "o", "gate_up", "down")


def measure(preset: str, batch_sizes: list[int], contexts: list[int]) -> dict:
    """{(kernel, batch): {"ms", "gbs", "pct_copy"}} plus the copy bandwidth itself."""
    import cupy as cp

    from kernels import cupy_backend as cb
    from kernels.cupy_measure import copy_bandwidth_gbs, time_launches_ms, time_ms

    cfg = get_preset(preset)
    copy = copy_bandwidth_gbs()
    out: dict = {("copy", 0): {"ms": 0.0, "gbs": copy, "pct_copy": 100.0}}

    def record(name: str, batch: int, ms: float, nbytes: float) -> None:
        gbs = nbytes / ms / 1e6
        out[name, batch] = {"ms": ms, "gbs": gbs, "pct_copy": 100 * gbs / copy}

    rng = cp.random.default_rng(1)
    h, i, n_layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    shapes = {"qkv": (cfg.qkv_size, h), "o": (h, cfg.q_size), "gate_up": (2 * i, h),
              "down": (h, i)}
    # Every layer's own weights, as in a real step: nothing is served from L2.
    weights = {p: [rng.standard_normal(s, cp.float32).astype(cp.float16) * 0.02
                   for _ in range(n_layers)] for p, s in shapes.items()}
    epilogue = {"qkv": "store_half", "o": "add_residual", "gate_up": "silu_mul",
                "down": "add_residual"}
    step_bytes = sum(math.prod(s) * 2 * n_layers for s in shapes.values())
    for b in batch_sizes:
        xs = {p: rng.standard_normal((b, s[1]), cp.float32).astype(cp.float16)
              for p, s in shapes.items()}
        outs = {"qkv": cp.zeros((b, cfg.qkv_size), cp.float16), "o": cp.zeros((b, h), cp.float32),
                "gate_up": cp.zeros((b, i), cp.float16), "down": cp.zeros((b, h), cp.float32)}
        for p in PROJECTIONS:
            launches = [cb.gemm_launch(xs[p], w, b, epilogue[p], outs[p]) for w in weights[p]]
            record(f"gemm_{p}", b, time_launches_ms(launches) / n_layers,
                   math.prod(shapes[p]) * 2)
        every = [cb.gemm_launch(xs[p], weights[p][layer], b, epilogue[p], outs[p])
                 for layer in range(n_layers) for p in PROJECTIONS]
        record(f"all_{4 * n_layers}_projections", b, time_launches_ms(every), step_bytes)

        def cublas(s: cp.cuda.Stream, xs: dict = xs) -> None:
            for layer in range(n_layers):
                for p in PROJECTIONS:
                    cp.matmul(xs[p], weights[p][layer].T)

        record(f"cublas_{4 * n_layers}_projections", b, time_ms(cublas), step_bytes)

    group = cfg.num_heads // cfg.num_kv_heads
    for ctx, b in ((c, b) for c in contexts for b in batch_sizes):
        blocks_per_seq = ctx // cfg.block_size
        nblocks = b * blocks_per_seq
        kv_shape = (nblocks, cfg.block_size, cfg.num_kv_heads, cfg.head_dim)
        kc = rng.standard_normal(kv_shape, cp.float32).astype(cp.float16)
        vc = rng.standard_normal(kv_shape, cp.float32).astype(cp.float16)
        tables = cp.asarray(np.random.default_rng(0).permutation(nblocks).astype(np.int32)
                            .reshape(b, blocks_per_seq))
        positions = cp.full(b, ctx - 1, cp.int32)
        qkv = rng.standard_normal((b, cfg.qkv_size), cp.float32).astype(cp.float16)
        part_o = cp.zeros((b, cfg.num_heads, cb.MAX_SPLITS, cfg.head_dim), cp.float32)
        part_ml = cp.zeros((b, cfg.num_heads, cb.MAX_SPLITS, 2), cp.float32)
        attn_out = cp.zeros((b, cfg.q_size), cp.float16)
        mod = cb.module("attention", cb.attention_names(cfg.head_dim, group))
        attn, combine = (mod.get_function(n) for n in cb.attention_names(cfg.head_dim, group))
        launches = [
            (attn, (b, cfg.num_kv_heads, cb.MAX_SPLITS), (cb.ATTN_THREADS,),
             (qkv, positions, tables, cb.i32(blocks_per_seq), cb.i32(cfg.num_kv_heads),
              cb.i32(cfg.block_size), cb.f32(cfg.head_dim ** -0.5), kc, vc, part_o, part_ml)),
            (combine, (b, cfg.num_heads), (cfg.head_dim,),
             (positions, cb.i32(cfg.num_heads), part_o, part_ml, attn_out)),
        ]
        record(f"attention_ctx{ctx}", b, time_launches_ms(launches), 2 * kc.nbytes)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default=PRESET)
    p.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    p.add_argument("--contexts", default=",".join(map(str, CONTEXTS)))
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = p.parse_args()
    if why := gpu_unavailable_reason():
        raise SystemExit(f"bench_kernels needs a GPU: {why}")
    res = measure(args.preset, [int(x) for x in args.batch_sizes.split(",")],
                  [int(x) for x in args.contexts.split(",")])
    rows = [[k, str(b or "-"), f"{v['ms'] * 1e3:.1f}" if v["ms"] else "-", f"{v['gbs']:.0f}",
             f"{v['pct_copy']:.1f}"] for (k, b), v in res.items()]
    print(f"preset {args.preset}; % copy = achieved GB/s over the device-to-device copy "
          f"measured in this run")
    print(format_table(["Kernel", "Batch", "Time (us)", "GB/s", "% copy"], rows))
    if args.json:
        write_json(args.json, {"preset": args.preset,
                               "kernels": [{"kernel": k, "batch_size": b, **v}
                                           for (k, b), v in res.items()]})


class Kernels:
    """asv: device time (events), GB/s and % of copy bandwidth of each kernel."""

    params = [["gemm_qkv", "gemm_o", "gemm_gate_up", "gemm_down", "all_128_projections",
               "cublas_128_projections"] + [f"attention_ctx{c}" for c in CONTEXTS], BATCH_SIZES]
    param_names = ["kernel", "batch_size"]
    timeout = 900

    def setup_cache(self) -> dict:
        if gpu_unavailable_reason():
            return {}
        return measure(PRESET, BATCH_SIZES, CONTEXTS)

    def setup(self, res: dict, kernel: str, batch_size: int) -> None:
        if (kernel, batch_size) not in res:
            raise NotImplementedError(f"no GPU: {gpu_unavailable_reason()}")

    def track_time_us(self, res, kernel, batch_size) -> float:
        return res[kernel, batch_size]["ms"] * 1e3

    track_time_us.unit = "us"

    def track_pct_copy_bandwidth(self, res, kernel, batch_size) -> float:
        return res[kernel, batch_size]["pct_copy"]

    track_pct_copy_bandwidth.unit = "%"


if __name__ == "__main__":
    main()
