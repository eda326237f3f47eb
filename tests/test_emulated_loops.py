"""The five loops on the CUDA C kernels without a GPU: the CuPy backend's step on the CPU
emulator, behind the backend protocol (tests/support/emulated_backend.py)."""

from __future__ import annotations

from functools import partial

import pytest

from schedbench import sweep as sweep_module
from schedbench.kernels.cuda import calls as kc
from schedbench.kernels.cuda.sources import (
    ATTENTION_TILINGS,
    DeviceFacts,
    WideTiling,
    attention_tiling,
)
from schedbench.kernels.errors import ConfigError
from schedbench.sweep import Sweep, SweepConfig
from schedbench.workload import WorkloadConfig
from tests.support import cuda_emulator
from tests.support.emulated_backend import EmulatedCudaBackend

pytestmark = [pytest.mark.slow,  # the CUDA C kernels emulated on the CPU: minutes
              pytest.mark.skipif(cuda_emulator.compiler() is None,
                                 reason="no C++ compiler for the CUDA emulator")]


def wide_from_2(x, w, batch: int, epilogue: str, out) -> kc.KernelCall:
    """wide_gemm (64-row tiles) for batches of 2 and more (on a GPU: SCHEDBENCH_WIDE_GEMM=2)."""
    return kc.gemm_call(x, w, batch, epilogue, out,
                        wide=WideTiling(64, 64) if batch >= 2 else None)


CFG = SweepConfig(backend="cpu", preset="micro", batch_sizes=(1, 3), steps=6, warmup=0,
                  repeats=1, modes=("sequential", "overlapped", "graphs", "overlapped2",
                                    "multistep"), multistep=3, multistep_graphs=True,
                  workload=WorkloadConfig((1, 4), (2, 6), seed=3), drain=True)


# The host's attention tiling rule on a GPU of one SM: micro has a block a row (one kv head,
# one split), so rows 1-2 run two stages in flight and 3 rows one, and a batch of 3 that
# shrinks, or a graph bucket that pads it, switches between them.
ONE_SM_ATTENTION = partial(kc.attention_call_picked,
                           device=DeviceFacts(1, 228 * 1024, 227 * 1024))


def loop_hashes(monkeypatch, gemm, attention=kc.attention_call) -> dict[int, str]:
    """Each batch size's token hash, after checking that every mode gave the same tokens."""
    monkeypatch.setattr(sweep_module, "make_backend",
                        lambda name, times=None: EmulatedCudaBackend(gemm, attention))
    sweep = Sweep(CFG)
    hashes = {}
    try:
        for b in CFG.batch_sizes:
            tokens = {m: sweep.run_one(m, b)[1] for m in CFG.modes}
            seq = tokens["sequential"]
            assert all(seq.complete) and len(seq.outputs) > b  # others joined mid-run
            for mode, t in tokens.items():
                assert t.sha256 == seq.sha256, (gemm.__name__, b, mode, seq.mismatches(t))
            hashes[b] = seq.sha256
    finally:
        sweep.close()
    return hashes


def test_the_loops_give_identical_tokens_on_the_cuda_c_kernels(monkeypatch):
    """Drained runs of every mode over the same requests, on the micro model: sequential,
    overlapped (next step's tokens read from the device token buffer), graphs (buckets of
    1, 2 and 3 rows, padding rows on the spare slot and block), overlapped2 and multistep
    (groups of 3 steps, each from a graph) agree on every token, and so
    do the same runs with wide_gemm for the projections of batches of 2 and more, and with
    the attention's stages in flight picked by grid size, as on a GPU."""
    hashes = loop_hashes(monkeypatch, kc.gemm_call)
    assert loop_hashes(monkeypatch, wide_from_2) == hashes
    assert loop_hashes(monkeypatch, kc.gemm_call, ONE_SM_ATTENTION) == hashes


def test_the_loops_agree_on_a_candidate_attention_tiling(monkeypatch):
    """The same with SCHEDBENCH_ATTENTION_TILING naming a candidate (its sums differ from the
    default's, so its tokens may too; every mode's must agree)."""
    monkeypatch.setenv("SCHEDBENCH_ATTENTION_TILING", str(ATTENTION_TILINGS[1]))
    loop_hashes(monkeypatch, kc.gemm_call)


def test_a_bad_attention_tiling_is_named(monkeypatch):
    monkeypatch.setenv("SCHEDBENCH_ATTENTION_TILING", "64/64/64")
    with pytest.raises(ConfigError, match=r"SCHEDBENCH_ATTENTION_TILING='64/64/64': must be "
                                          r"one of 256/32/64x1, 128/64/64x1, "):
        attention_tiling()
