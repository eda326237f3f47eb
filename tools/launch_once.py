"""One launch of a CuPy kernel (or of the Numba attention) at llama3-8b shapes, for a tool
that watches it: ncu profiles it, compute-sanitizer checks it at the head dim the step runs
(the sanitizer runs of tools/gpu_check.sh otherwise use the tiny preset).

Usage (from the repository root, on a GPU machine):
  python tools/launch_once.py attention --batch 16 --context 4096
  python tools/launch_once.py numba-attention --batch 1 --context 4096   (each family)
  python tools/launch_once.py gemm --batch 16 --projection down --variants
  python tools/launch_once.py gemm --batch 256 --projection gate_up --wide
  SCHEDBENCH_ATTENTION_TILING=256/32/64x2 python tools/launch_once.py attention
"""

from __future__ import annotations

import argparse
import dataclasses

import cupy as cp

from schedbench.kernels.cuda.calls import AttentionScratch, gemm_variants, rope_table
from schedbench.kernels.cuda.sources import WIDE_GEMM_STAGES, attention_tiling
from schedbench.kernels.cupy import selection as sel
from schedbench.kernels.model import get_preset
from suites.bench_kernels import (
    EPILOGUES,
    attention_inputs,
    numba_attention_launches,
    projection_output,
    projection_shapes,
)

CFG = dataclasses.replace(get_preset("llama3-8b"), num_layers=1)  # one layer's cache to fill


def attention(batch: int, context: int) -> list:
    qkv, positions, tables, kc, vc = attention_inputs(CFG, context, batch)
    scratch = AttentionScratch.create(CFG, batch, context, cp, attention_tiling())
    out = cp.zeros((batch, CFG.q_size), cp.float16)
    return [sel.attention_launch(CFG, qkv, positions, tables, rope_table(CFG, positions, cp),
                                kc[0], vc[0], batch, scratch, out)]


def numba_attention(batch: int, context: int) -> list:
    """The Numba attention of each kernel family, the GPU's default first, as launches on a
    stream pointer like the CuPy ones."""
    from schedbench.kernels.numba.kernels import cuda

    by_family, _ = numba_attention_launches(CFG, context, batch)
    return [lambda ptr, k=kernel, g=grid, t=threads, a=args: k[g, t, cuda.external_stream(ptr)](*a)
            for launches in by_family.values() for kernel, grid, threads, args in launches]


def gemm(batch: int, projection: str, every: bool, wide: bool) -> list:
    n, k = projection_shapes(CFG)[projection]
    rng = cp.random.default_rng(0)
    x = rng.standard_normal((batch, k), cp.float32).astype(cp.float16)
    w = (rng.standard_normal((n, k), cp.float32) * 0.02).astype(cp.float16)
    out = projection_output(CFG, projection, batch, cp)
    if wide:  # every stage count whose shared memory this GPU gives a block
        return [sel.gemm_launch(x, w, batch, EPILOGUES[projection], out, wide=True,
                               wide_stages=s) for s in WIDE_GEMM_STAGES
                if sel.wide_gemm_fits(sel.wide_tiling(n, batch, s))]
    default = sel.gemm_variant_default(n, batch)
    others = [v for v in gemm_variants(batch) if v != default] if every else []
    return [sel.gemm_launch(x, w, batch, EPILOGUES[projection], out, variant=v, wide=False)
            for v in [default, *others]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kernel", choices=("attention", "numba-attention", "gemm"))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--context", type=int, default=4096, help="attention: tokens a row")
    p.add_argument("--projection", default="gate_up", choices=tuple(EPILOGUES))
    p.add_argument("--variants", action="store_true",
                   help="gemm: the default variant, then the others (up to batch 16)")
    p.add_argument("--wide", action="store_true",
                   help="gemm: wide_gemm (the large-batch kernel), with each stage count")
    args = p.parse_args()
    launches = {"attention": lambda: attention(args.batch, args.context),
                "numba-attention": lambda: numba_attention(args.batch, args.context),
                "gemm": lambda: gemm(args.batch, args.projection, args.variants, args.wide),
                }[args.kernel]()
    cp.cuda.Device().synchronize()  # the inputs, made on the legacy stream
    stream = cp.cuda.Stream(non_blocking=True)
    for launch in launches:
        launch(stream.ptr)
    stream.synchronize()
    print(f"{args.kernel}: {len(launches)} launch(es) done")


if __name__ == "__main__":
    main()
