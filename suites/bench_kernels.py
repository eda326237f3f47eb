"""Each decode kernel's device time, achieved GB/s and % of the copy bandwidth measured in
the same run: the CuPy projection kernel beside cuBLAS (``cupy.matmul`` into preallocated
outputs) on the same shapes, both replayed from a graph (``all_128_projections``,
``cublas_128_projections``) and both launched one at a time (``..._eager``); up to batch
16 also with tc_gemm's other variants, as ``gemm_o@plain`` or ``gemm_qkv@pipe1``, and a
step's projections as ``all_128_projections_plain`` and ``all_128_projections_pipe1``,
pipe1 where the default is plain; and with programmatic dependent launch when
``SCHEDBENCH_PDL=1``; at large batches also ``wide_gemm``, per projection as
``gemm_o@wide`` and a step's with each of its stage counts), paged attention (the tiling
the host picks for the grid, then every other of ``kernels.cuda.sources.ATTENTION_TILINGS``
as ``attention_ctx2048@split/max_splits/stage x stages``), and the Numba kernels on the same
shapes. Each figure is per layer, timed over a graph of every layer's launches (but the
``_eager`` rows), each layer with its own weights or KV cache as in a step, so nothing is
served from L2.

asv: ``asv run --python=same --bench bench_kernels`` (skipped without a GPU).
Directly: ``python suites/bench_kernels.py [--preset llama3-8b] [--batch-sizes 1,4,16]``
(``--no-candidates``: the host's picks, cuBLAS and the Numba kernels only).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType

import numpy as np

from schedbench.arguments import int_list, int_list_text, reported
from schedbench.kernels.cuda.calls import (
    AttentionScratch,
    gemm_variants,
    picked_attention_tiling,
    rope_table,
)
from schedbench.kernels.cuda.sources import (
    ATTENTION_TILINGS,
    GEMM_VARIANTS,
    WIDE_GEMM_COLS,
    WIDE_GEMM_ROWS,
    WIDE_GEMM_STAGES,
    WideTiling,
    attention_tiling,
)
from schedbench.kernels.errors import ConfigError
from schedbench.kernels.model import ModelConfig, get_preset
from schedbench.kernels.numba.family import KERNEL_FAMILIES
from schedbench.kernels.registry import unavailable_reason
from schedbench.resolution import significant

# NOTE: schedbench.report and schedbench.sweep are imported where they are used: they bring in
# the engine and Numba's CPU kernels (0.2 s), and asv imports this module once for each of
# its hundreds of points.

PRESET = "llama3-8b"
BATCH_SIZES = [1, 4, 16]
WIDE_BATCH_SIZES = [64, 256]  # the step's projections only, tc_gemm against wide_gemm
CONTEXTS = [2048, 4096, 8192]
PROJECTIONS = ("qkv", "o", "gate_up", "down")
EPILOGUES = {"qkv": "store_half", "o": "add_residual", "gate_up": "silu_mul",
             "down": "add_residual"}


def projection_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """Each projection's weights, [N, K] (gate/up: both halves' rows)."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    return {"qkv": (cfg.qkv_size, h), "o": (h, cfg.q_size), "gate_up": (2 * i, h),
            "down": (h, i)}


def projection_output(cfg: ModelConfig, projection: str, batch: int, xp: ModuleType):
    """A zeroed output of ``projection`` at ``batch`` rows, as its epilogue writes it."""
    n, epilogue = projection_shapes(cfg)[projection][0], EPILOGUES[projection]
    if epilogue == "silu_mul":
        return xp.zeros((batch, n // 2), xp.float16)
    return xp.zeros((batch, n), xp.float16 if epilogue == "store_half" else xp.float32)


class Figures(dict):
    """{(kernel, batch): {"ms", "gbs", "pct_copy"}}, against the copy bandwidth; ``sink``
    sees them after every figure, so a run cut off keeps what it measured."""

    def __init__(self, copy_gbs: float, sink: Callable[[Figures], None] | None = None) -> None:
        super().__init__({("copy", 0): {"ms": 0.0, "gbs": copy_gbs, "pct_copy": 100.0}})
        self.copy_gbs, self.sink = copy_gbs, sink

    def record(self, name: str, batch: int, ms: float, nbytes: float) -> None:
        gbs = nbytes / ms / 1e6
        self[name, batch] = {"ms": ms, "gbs": gbs, "pct_copy": 100 * gbs / self.copy_gbs}
        if self.sink:
            self.sink(self)


def wide_suffix(stages: int) -> str:
    """A step's projections on wide_gemm: ``_wide`` with the default stage count, else
    ``_wide4``, ``_wide5``."""
    return "_wide" + ("" if stages == WIDE_GEMM_STAGES[0] else str(stages))


def row_name(kernel: str, pick, default) -> str:
    """A figure's name: ``kernel`` where ``pick`` is the default, else ``kernel@pick`` (a
    candidate measured beside it)."""
    return kernel if pick == default else f"{kernel}@{pick}"


def kernels_doc(preset: str, fig: Figures, complete: bool) -> dict:
    """The figures as ``--json`` writes them; ``complete`` is false until the last one."""
    return {"preset": preset, "complete": complete,
            "kernels": [{"kernel": k, "batch_size": b, **v} for (k, b), v in fig.items()]}


def write_partial(path: Path, preset: str, fig: Figures) -> None:
    from schedbench.report import write_json

    write_json(path, kernels_doc(preset, fig, False))


def measure(preset: str, batch_sizes: list[int], contexts: list[int],
            wide_batch_sizes: list[int] = WIDE_BATCH_SIZES, numba: bool = True,
            sink: Callable[[Figures], None] | None = None, candidates: bool = True,
            nvbench: bool = False) -> Figures:
    """Every figure the module docstring names; without ``candidates``, only what the host
    runs (each kernel's pick for its shape), cuBLAS and the Numba kernels: the issues'
    targets in a shorter run. With ``nvbench``, a step's projections at each batch size and
    the attention at the first context are timed again by nvbench (``nvbench:`` rows)."""
    import cupy as cp

    from schedbench.kernels.cupy import selection as sel
    from schedbench.kernels.cupy.measure import (
        copy_bandwidth_gbs,
        eager_launches_ms,
        guarded,
        replay_ms,
        time_launches_ms,
        time_ms,
    )

    cfg = get_preset(preset)
    fig = Figures(copy_bandwidth_gbs(), sink)
    rng = cp.random.default_rng(1)
    n_layers = cfg.num_layers
    shapes = projection_shapes(cfg)
    # Every layer's own weights, as in a real step: nothing is served from L2.
    weights = {p: [rng.standard_normal(s, cp.float32).astype(cp.float16) * 0.02
                   for _ in range(n_layers)] for p, s in shapes.items()}
    step_bytes = sum(math.prod(s) * 2 * n_layers for s in shapes.values())
    # (row, batch) -> (launches, per, bytes, what they read): the rows nvbench times again,
    # their inputs kept alive until it has
    checks: dict[tuple[str, int], tuple[list, int, float, object]] = {}

    def projection_inputs(b: int) -> tuple[dict, dict]:
        xs = {p: rng.standard_normal((b, s[1]), cp.float32).astype(cp.float16)
              for p, s in shapes.items()}
        return xs, {p: projection_output(cfg, p, b, cp) for p in PROJECTIONS}

    def step_rows(b: int, xs: dict, outs: dict, variants: dict[str, Callable[[str], dict]]
                  ) -> None:
        """A step's projections with each variant: gemm_launch's settings for a projection
        (by default its default kernel's), then cuBLAS's on equal footing: its products
        into preallocated outputs, replayed from a graph as ours are; then both eager, a
        launch at a time from the host, where launch cost shows on a row of its own."""
        step = f"all_{4 * n_layers}_projections"
        for suffix, how in variants.items():
            every = [sel.gemm_launch(xs[p], weights[p][layer], b, EPILOGUES[p], outs[p],
                                    **{"pdl": False, "wide": False, **how(p)})
                     for layer in range(n_layers) for p in PROJECTIONS]
            fig.record(step + suffix, b, time_launches_ms(every), step_bytes)
            if not suffix:
                fig.record(step + "_eager", b, eager_launches_ms(every), step_bytes)
                if nvbench:
                    checks[step, b] = every, 1, step_bytes, (xs, outs)
        products = {p: cp.empty((b, shapes[p][0]), cp.float16) for p in PROJECTIONS}

        def cublas(s: cp.cuda.Stream) -> None:
            with s:
                for layer in range(n_layers):
                    for p in PROJECTIONS:
                        cp.matmul(xs[p], weights[p][layer].T, out=products[p])

        # NOTE: eager first: it makes cuBLAS's handle and workspace, which a capture cannot
        fig.record(f"cublas_{4 * n_layers}_projections_eager", b, time_ms(cublas), step_bytes)
        guarded(f"cuBLAS replayed from a graph (batch {b})", lambda: fig.record(
            f"cublas_{4 * n_layers}_projections", b, replay_ms(cublas), step_bytes))

    def projection_row(name: str, b: int, xs: dict, outs: dict, p: str, **how) -> None:
        """One projection of every layer, with gemm_launch's settings ``how``."""
        launches = [sel.gemm_launch(xs[p], w, b, EPILOGUES[p], outs[p], **{"pdl": False, **how})
                    for w in weights[p]]
        fig.record(name, b, time_launches_ms(launches) / n_layers, math.prod(shapes[p]) * 2)

    inputs = {}
    for b in batch_sizes:
        inputs[b] = xs, outs = projection_inputs(b)
        # Beside the default, in the same run, the candidates: tc_gemm's other variants
        # (gemm.cu, PIPE; up to batch 16) and PDL (opt-in, SCHEDBENCH_PDL=1).
        others = candidates and len(gemm_variants(b)) > 1
        for p in PROJECTIONS:
            default = sel.gemm_variant_default(shapes[p][0], b)
            for variant in gemm_variants(b) if candidates else (default,):
                projection_row(row_name(f"gemm_{p}", variant, default), b, xs, outs, p,
                               variant=variant, wide=False)
        variants: dict[str, Callable[[str], dict]] = {"": lambda p: {}}
        plain = {p for p in PROJECTIONS if sel.gemm_variant_default(shapes[p][0], b) == "plain"}
        if others:
            variants["_plain"] = lambda p: {"variant": "plain"}
        if others and plain:  # pipe1 where the default is plain (below batch 9: qkv, gate/up)
            variants["_pipe1"] = lambda p, plain=plain: {"variant": "pipe1"} if p in plain else {}
        if candidates and sel.pdl_default():
            variants["_pdl"] = lambda p: {"pdl": True}
        step_rows(b, xs, outs, variants)
    combos = [(c, b) for c in contexts for b in batch_sizes]
    for ctx, b in combos:
        qkv, positions, tables, kc, vc = attention_inputs(cfg, ctx, b)
        out = cp.zeros((b, cfg.q_size), cp.float16)
        rope = rope_table(cfg, positions, cp)
        # the tiling the host picks for this grid, then every other on the same inputs
        # (attention_ctx2048@...)
        scratch = AttentionScratch.create(cfg, b, ctx, cp, attention_tiling())
        chosen = picked_attention_tiling(cfg, b, scratch, sel.device_facts())
        rest = [t for t in ATTENTION_TILINGS if t != chosen] if candidates else []
        for tiling in (None, *rest):
            if tiling is not None:
                scratch = AttentionScratch.create(cfg, b, ctx, cp, tiling)
            launches = [sel.attention_launch(cfg, qkv, positions, tables, rope, kc[layer],
                                            vc[layer], b, scratch, out, tiling)
                        for layer in range(n_layers)]
            fig.record(row_name(f"attention_ctx{ctx}", tiling, None), b,
                       time_launches_ms(launches) / n_layers, 2 * kc[0].nbytes)
            if nvbench and tiling is None and ctx == contexts[0]:
                checks[f"attention_ctx{ctx}", b] = (launches, n_layers, 2 * kc[0].nbytes,
                                                    (qkv, positions, tables, rope, kc, vc,
                                                     scratch, out))
        del kc, vc, launches
        cp.get_default_memory_pool().free_all_blocks()  # the next context's caches fit

    def large_batch_rows() -> None:
        """Large batches: tc_gemm beside wide_gemm, the kernel that stages operands in shared
        memory (gemm.cu), per projection (``gemm_o`` and ``gemm_o@wide``) and for a step's
        projections with each stage count whose shared memory this GPU gives a block
        (``_wide``: the default's, then ``_wide4``, ``_wide5``), and cuBLAS."""
        wide = {wide_suffix(s): lambda p, s=s: {"wide": True, "wide_stages": s}
                for s in WIDE_GEMM_STAGES if candidates
                and sel.wide_gemm_fits(WideTiling(max(WIDE_GEMM_ROWS), max(WIDE_GEMM_COLS), s))}
        for b in wide_batch_sizes:
            xs, outs = projection_inputs(b)
            for p in PROJECTIONS:
                projection_row(f"gemm_{p}", b, xs, outs, p, wide=False)
                if candidates:
                    projection_row(f"gemm_{p}@wide", b, xs, outs, p, wide=True)
            step_rows(b, xs, outs, {"": lambda p: {}, **wide})

    def nvbench_rows() -> None:
        from schedbench.kernels.cupy.nvbench import nvbench_ms

        cp.cuda.Device().synchronize()  # NOTE: see measure.time_ms
        times = nvbench_ms({f"{name} b{b}": partial(enqueue_all, launches)
                            for (name, b), (launches, *_) in checks.items()})
        for (name, b), (_, per, nbytes, _) in checks.items():
            fig.record(f"nvbench:{name}", b, times[f"{name} b{b}"].mean_ms / per, nbytes)
        checks.clear()

    if nvbench:
        guarded("bench_kernels: the nvbench cross-check", nvbench_rows)
    # The kernels not yet run on a GPU come last, each section guarded: a kernel that faults
    # ends the process's CUDA context, and the figures before it must survive.
    guarded("bench_kernels: the large-batch projection", large_batch_rows)
    if numba:
        guarded("bench_kernels: the Numba GEMM", numba_gemms, fig, shapes, weights, inputs)
        for ctx, b in combos:
            guarded("bench_kernels: the Numba attention", numba_attention, fig, cfg, ctx, b)
    return fig


def enqueue_all(launches: list, stream_ptr: int) -> None:
    for launch in launches:
        launch(stream_ptr)


def attention_inputs(cfg: ModelConfig, ctx: int, b: int) -> tuple:
    """(qkv, positions, tables, k cache, v cache) of ``b`` rows at ``ctx`` tokens, the same
    for every call. Every layer has its own cache, as in a real step: a layer's KV (8 MB at
    batch 1 and 2k tokens) would otherwise be served from L2 by the second replay."""
    import cupy as cp

    rng = cp.random.default_rng(ctx + b)
    blocks_per_seq = ctx // cfg.block_size
    nblocks = b * blocks_per_seq
    shape = (cfg.num_layers, nblocks, cfg.block_size, cfg.num_kv_heads, cfg.head_dim)
    kc, vc = cp.empty(shape, cp.float16), cp.empty(shape, cp.float16)
    for layer in range(cfg.num_layers):  # one layer at a time bounds the fp32 temporary
        kc[layer] = rng.standard_normal(shape[1:], cp.float32)
        vc[layer] = rng.standard_normal(shape[1:], cp.float32)
    tables = cp.asarray(np.random.default_rng(0).permutation(nblocks).astype(np.int32)
                        .reshape(b, blocks_per_seq))
    positions = cp.full(b, ctx - 1, cp.int32)
    qkv = rng.standard_normal((b, cfg.qkv_size), cp.float32).astype(cp.float16)
    return qkv, positions, tables, kc, vc


def numba_timed_ms(launches: list[tuple]) -> float:
    """Device time of Numba launches ``(kernel, grid, threads, args)`` on a CuPy stream,
    captured into a graph exactly like the CuPy kernels, so both are timed alike."""
    import cupy as cp

    from schedbench.kernels.cupy.measure import replay_ms
    from schedbench.kernels.numba.kernels import cuda

    cp.cuda.Device().synchronize()  # NOTE: inputs were made on the legacy stream
    stream = cp.cuda.Stream(non_blocking=True)
    ext = cuda.external_stream(stream.ptr)

    def enqueue_all(_: cp.cuda.Stream) -> None:
        for kernel, grid, threads, args in launches:
            kernel[grid, threads, ext](*args)

    enqueue_all(stream)  # compile, and fault here rather than inside a graph
    stream.synchronize()
    return replay_ms(enqueue_all, stream)


def numba_gemms(fig: Figures, shapes: dict, weights: dict, inputs: dict) -> None:
    """The Numba GEMM on the CuPy rows' arrays (wrapped zero-copy), every layer's weights:
    ``numba_gemm_p`` the kernels this GPU runs by default, ``numba_gemm_p@family`` the
    other family where the GPU has both (numba_family.KERNEL_FAMILIES)."""
    from schedbench.kernels.numba import tc_gemm as tg
    from schedbench.kernels.numba.family import kernel_families
    from schedbench.kernels.numba.kernels import cuda

    epilogues = {"store_half": "store", "add_residual": "add", "silu_mul": "silu_mul"}
    families = kernel_families(cuda.get_current_device().compute_capability)
    for p in PROJECTIONS:
        ws = [cuda.as_cuda_array(w) for w in weights[p]]
        for b, (xs, outs) in inputs.items():
            x, out = cuda.as_cuda_array(xs[p]), cuda.as_cuda_array(outs[p])
            for family in families:
                kernel, grid, threads = tg.gemm_launch(family, epilogues[EPILOGUES[p]], b,
                                                       ws[0].shape[0], ws[0].shape[1])
                launches = [(kernel, grid, threads, (x, w, out)) for w in ws]
                fig.record(row_name(f"numba_gemm_{p}", family, families[0]), b,
                           numba_timed_ms(launches) / len(launches), math.prod(shapes[p]) * 2)


def numba_attention_launches(cfg: ModelConfig, ctx: int, b: int) -> tuple[dict, int]:
    """The Numba attention over ``attention_inputs``, every layer's, for each kernel family
    this GPU runs (its default first): ``{family: launches}``, and a layer's K/V bytes."""
    import cupy as cp

    from schedbench.kernels.numba import kernels as nk
    from schedbench.kernels.numba.family import kernel_families
    from schedbench.kernels.numba.tc_attention import attention_launch

    wrap = nk.cuda.as_cuda_array
    qkv, positions, tables, kc, vc = attention_inputs(cfg, ctx, b)
    scratch = nk.attention_scratch(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, b, ctx,
                                   lambda *a: wrap(cp.zeros(*a)))
    out, q, pos, tab = wrap(cp.zeros((b, cfg.q_size), cp.float16)), wrap(qkv), \
        wrap(positions), wrap(tables)
    rope = wrap(rope_table(cfg, positions, cp))
    families = kernel_families(nk.cuda.get_current_device().compute_capability)
    return {f: [attention_launch(f, cfg, q, pos, tab, wrap(kc[layer]), wrap(vc[layer]), rope, b,
                                 scratch, out) for layer in range(kc.shape[0])]
            for f in families}, 2 * kc[0].nbytes


def numba_attention(fig: Figures, cfg: ModelConfig, ctx: int, b: int) -> None:
    """``numba_attention_ctxN``: this GPU's default kernel family, ``numba_attention_ctxN@family``
    the other, on the CuPy row's inputs."""
    by_family, kv_bytes = numba_attention_launches(cfg, ctx, b)
    default = next(iter(by_family))
    for family, launches in by_family.items():
        fig.record(row_name(f"numba_attention_ctx{ctx}", family, default), b,
                   numba_timed_ms(launches) / len(launches), kv_bytes)


def check_shapes(preset: str, batch_sizes: list[int], contexts: list[int]) -> None:
    """Name a bad value before any device work; a context that is not whole blocks would
    send the attention past its block table."""
    from schedbench.sweep import check_batch_size

    cfg = get_preset(preset)
    for b in batch_sizes:
        check_batch_size(b)
    for c in contexts:
        if c < cfg.block_size or c % cfg.block_size:
            raise ConfigError(f"--contexts {c}: must be a positive multiple of the block size "
                              f"({cfg.block_size})")


def main() -> None:
    from schedbench.report import format_table, write_json

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default=PRESET, help="model shapes (default %(default)s)")
    p.add_argument("--batch-sizes", type=int_list, default=tuple(BATCH_SIZES), metavar="B,B,...",
                   help=f"every kernel's batch sizes (default {int_list_text(BATCH_SIZES)})")
    p.add_argument("--contexts", type=int_list, default=tuple(CONTEXTS), metavar="T,T,...",
                   help="the attention's context lengths in tokens "
                        f"(default {int_list_text(CONTEXTS)})")
    p.add_argument("--wide-batch-sizes", type=int_list, default=tuple(WIDE_BATCH_SIZES),
                   metavar="B,B,...",
                   help="batch sizes of the step's projections only: tc_gemm, wide_gemm, "
                        f"cuBLAS ('' for none; default {int_list_text(WIDE_BATCH_SIZES)})")
    p.add_argument("--no-numba", action="store_true", help="CuPy kernels only")
    p.add_argument("--no-candidates", action="store_true",
                   help="only what the host runs, cuBLAS and the Numba kernels: no other GEMM "
                        "variant, PDL, attention tiling or wide_gemm (the targets, sooner)")
    p.add_argument("--nvbench", action="store_true",
                   help="time a step's projections and the attention at the first context "
                        "again with nvbench (cuda-bench: L2 flushed before each sample, "
                        "samples until its noise criterion holds), and compare")
    p.add_argument("--json", type=Path, default=None,
                   help="also write the figures as JSON, rewritten after each one (\"complete\": "
                        "false until the last, so a run cut off keeps what it measured)")
    args = p.parse_args()
    batch_sizes, contexts, wide = map(list, (args.batch_sizes, args.contexts,
                                             args.wide_batch_sizes))
    with reported(p):
        check_shapes(args.preset, batch_sizes + wide, contexts)
        if why := unavailable_reason("cupy"):
            raise SystemExit(f"bench_kernels needs a GPU that runs the CuPy kernels: {why}")
        res = measure(args.preset, batch_sizes, contexts, wide, numba=not args.no_numba,
                      sink=partial(write_partial, args.json, args.preset) if args.json else None,
                      candidates=not args.no_candidates, nvbench=args.nvbench)
    rows = [[k, str(b or "-"), f"{v['ms'] * 1e3:.1f}" if v["ms"] else "-", f"{v['gbs']:.0f}",
             f"{v['pct_copy']:.1f}"] for (k, b), v in res.items()]
    print(f"preset {args.preset}; % copy = achieved GB/s over the device-to-device copy "
          f"measured in this run")
    print(format_table(["Kernel", "Batch", "Time (us)", "GB/s", "% copy"], rows))
    if args.nvbench:
        print("\n" + crosscheck_table(res))
    if args.json:
        write_json(args.json, kernels_doc(args.preset, res, True))


AGREE_PCT = 5.0


def crosscheck_table(fig: Figures) -> str:
    """Each row nvbench timed again beside this suite's figure, and whether they agree."""
    from schedbench.report import format_table

    rows = []
    for (name, b), theirs in fig.items():
        if not name.startswith("nvbench:") or (ours := fig.get((name[8:], b))) is None:
            continue
        diff = 100 * (theirs["ms"] / ours["ms"] - 1)
        rows.append([name[8:], str(b), f"{ours['ms'] * 1e3:.1f}", f"{theirs['ms'] * 1e3:.1f}",
                     f"{diff:+.1f}", "agree" if abs(diff) <= AGREE_PCT else "DIFFER"])
    if not rows:
        return "nvbench cross-check: no row was timed by nvbench (see the errors above)"
    return (f"nvbench cross-check (per layer; ours: the median of graph replays, each between "
            f"two events; nvbench: its cold mean, L2 flushed before each sample; they agree "
            f"within {AGREE_PCT:g} %):\n"
            + format_table(["Kernel", "Batch", "Ours (us)", "nvbench (us)", "Diff %",
                            "Verdict"], rows))


def asv_grids(cfg: ModelConfig) -> dict[str, tuple[list[str], list[int]]]:
    """asv's grids, a class each below: {class: (kernels, batch sizes)}, each kernel at the
    batch sizes ``measure`` records it at with this module's defaults (asv runs a process per
    point, so a point that is never measured costs as much as one that is). A candidate has a
    gap at a batch where the host picks it: its figure there is the row without ``@``."""
    step = f"all_{4 * cfg.num_layers}_projections"
    families = (None, *KERNEL_FAMILIES)
    return {
        "Kernels": ([f"gemm_{p}" for p in PROJECTIONS]
                    + [step, f"cublas_{4 * cfg.num_layers}_projections"]
                    + [step + "_eager", f"cublas_{4 * cfg.num_layers}_projections_eager"],
                    BATCH_SIZES + WIDE_BATCH_SIZES),
        "GemmCandidates": ([f"gemm_{p}@{v}" for p in PROJECTIONS for v in GEMM_VARIANTS]
                           + [step + s for s in ("_plain", "_pipe1", "_pdl")], BATCH_SIZES),
        "WideGemm": ([f"gemm_{p}@wide" for p in PROJECTIONS]
                     + [step + wide_suffix(s) for s in WIDE_GEMM_STAGES], WIDE_BATCH_SIZES),
        "Attention": ([row_name(f"attention_ctx{c}", t, None) for c in CONTEXTS
                       for t in (None, *ATTENTION_TILINGS)], BATCH_SIZES),
        "NumbaKernels": ([row_name(f"numba_gemm_{p}", f, None) for p in PROJECTIONS
                          for f in families]
                         + [row_name(f"numba_attention_ctx{c}", f, None) for c in CONTEXTS
                            for f in families], BATCH_SIZES),
        "CopyBandwidth": (["copy"], [0]),
    }


ASV_GRIDS = asv_grids(get_preset(PRESET))


class _Figures:
    """asv: one ``measure`` run's figures. Every class below inherits this ``setup_cache``,
    which asv keys by its source line: one ``measure`` serves them all."""

    param_names = ["kernel", "batch_size"]
    timeout = 900

    def setup_cache(self) -> dict:
        if unavailable_reason("cupy"):
            return {}
        return dict(measure(PRESET, BATCH_SIZES, CONTEXTS, WIDE_BATCH_SIZES))

    def setup(self, res: dict, kernel: str, batch_size: int) -> None:
        if (kernel, batch_size) not in res:
            raise NotImplementedError(unavailable_reason("cupy")
                                      or f"{kernel} is not measured at batch {batch_size}")


class _Grid(_Figures):
    """asv: device time (events) and % of copy bandwidth of a grid of kernels."""

    def track_time_us(self, res, kernel, batch_size) -> float:
        return significant(res[kernel, batch_size]["ms"] * 1e3)

    track_time_us.unit = "us"

    def track_pct_copy_bandwidth(self, res, kernel, batch_size) -> float:
        return significant(res[kernel, batch_size]["pct_copy"])

    track_pct_copy_bandwidth.unit = "%"


class Kernels(_Grid):
    """What the host runs: each projection's GEMM, a step's 128, and cuBLAS's."""

    params = list(ASV_GRIDS["Kernels"])


class GemmCandidates(_Grid):
    """tc_gemm's variants beside the default, and a step's with each (and with PDL)."""

    params = list(ASV_GRIDS["GemmCandidates"])


class WideGemm(_Grid):
    """wide_gemm at large batches, per projection and a step's with each stage count."""

    params = list(ASV_GRIDS["WideGemm"])


class Attention(_Grid):
    """The paged attention with the host's tiling, then with every other."""

    params = list(ASV_GRIDS["Attention"])


class NumbaKernels(_Grid):
    """The Numba GEMM and attention, this GPU's default family, then each family."""

    params = list(ASV_GRIDS["NumbaKernels"])


class CopyBandwidth(_Figures):
    """The device-to-device copy that every % of copy bandwidth divides by, measured in the
    same run: a % that moved with it moved with the device or its clocks, not a kernel."""

    params = list(ASV_GRIDS["CopyBandwidth"])

    def track_gbs(self, res, kernel, batch_size) -> float:
        return significant(res[kernel, batch_size]["gbs"])

    track_gbs.unit = "GB/s"


if __name__ == "__main__":
    main()
