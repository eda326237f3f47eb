from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from schedbench.kernels import reference as ref
from schedbench.kernels.devices import gpu_unavailable_reason

# Without a GPU the Numba CUDA kernels run in Numba's simulator; numba reads this once, when
# it is first imported, so it is set before any test module can import numba.
if gpu_unavailable_reason():
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
# The simulator runs a block's threads as Python threads that meet at every barrier and warp
# shuffle; at the default 5 ms switch interval a meeting of 32 took tens of ms, and
# test_numba_backend.py ran 2.8x as long (216 s against 78 s on a 2-vCPU VM).
SIMULATOR_SWITCH_INTERVAL_S = 5e-4


@pytest.fixture(scope="module")
def simulator_switch_interval():
    """The module's tests with SIMULATOR_SWITCH_INTERVAL_S where the simulator runs them."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        yield
        return
    before = sys.getswitchinterval()
    sys.setswitchinterval(SIMULATOR_SWITCH_INTERVAL_S)
    yield
    sys.setswitchinterval(before)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any("gpu" in item.keywords for item in items):
        return
    why = gpu_unavailable_reason()
    if why:
        skip = pytest.mark.skip(reason=f"no CUDA GPU: {why}")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def fast_sweep(repeats: int = 1) -> list[str]:
    """Flags of a command-line sweep of short CPU runs, for tests of what wraps the runs."""
    return ["--backend", "cpu", "--steps", "12", "--warmup", "2", "--repeats", str(repeats),
            "--prompt-len", "1:4", "--output-len", "4:10"]


def sweep_until(argv: list[str], run: int, **popen) -> subprocess.Popen:
    """``python -m schedbench ARGV`` in a process of its own, returned once its progress
    ("[t s] k/N label" on stderr) says that run ``run`` has started. SIGINT starts at its
    default there, so Python turns it into KeyboardInterrupt even under a shell that started
    these tests in the background, with SIGINT ignored (which a child would inherit)."""
    proc = subprocess.Popen([sys.executable, "-m", "schedbench", *argv], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            **popen)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.split("]")[-1].strip().startswith(f"{run}/"):
            return proc
    raise AssertionError(f"the sweep ended before run {run}: exit code {proc.wait()}")


ROOT = Path(__file__).resolve().parent.parent


def git(*args: str) -> subprocess.CompletedProcess:
    """``git ARGS`` in this checkout."""
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)


def copy_of_tree(dest: Path) -> Path:
    """The working tree as a device call copies it (tracked files, and untracked ones git
    does not ignore), without .git, in ``dest``."""
    for f in git("ls-files", "-co", "--exclude-standard", "-z").stdout.split("\0"):
        if f and (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    return dest


@pytest.fixture(scope="session")
def checkout_head() -> str:
    """The commit this tree is checked out at; the test is skipped where there is none (an
    sdist, a copy without .git), since asv files results under a commit."""
    if shutil.which("git") is None or git("rev-parse", "HEAD").returncode:
        pytest.skip("needs a git checkout: asv files results under a commit")
    return git("rev-parse", "HEAD").stdout.strip()


@pytest.fixture(scope="session")
def cpu_backend():
    from schedbench.kernels.cpu.backend import CpuBackend

    backend = CpuBackend()
    yield backend
    backend.close()


@pytest.fixture
def dev(request: pytest.FixtureRequest):
    """Where a CUDA C kernel test runs its calls (tests/support/kernel_devices.py)."""
    from tests.support.kernel_devices import make_device

    return make_device(request.param)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng()


FP16_TOL = 3e-3  # fp16 storage of the result, fp32 accumulation


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def half(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float16)


def paged_fp16(rng: np.random.Generator, cfg, lengths: list[int]):
    """Scattered block tables (one spare column) and random fp16 K/V caches for sequences of
    the given lengths, every block filled."""
    mb = max(-(-n // cfg.block_size) for n in lengths) + 1
    nblocks = len(lengths) * mb
    tables = rng.permutation(nblocks).astype(np.int32).reshape(len(lengths), mb)
    shape = (nblocks, cfg.block_size, cfg.num_kv_heads, cfg.head_dim)
    return tables, half(rng, *shape), half(rng, *shape)


@dataclass
class AppendCase:
    """Paged attention inputs for sequences of some lengths, whose new tokens' cache rows
    start as NaN (attention must take the new k and v from qkv, not read them back), and what
    RoPE, the append and attention must leave (float64)."""

    tables: np.ndarray
    k_cache: np.ndarray
    v_cache: np.ndarray
    positions: np.ndarray
    qkv: np.ndarray  # unrotated, as the QKV projection leaves it
    new_rows: tuple[np.ndarray, np.ndarray]  # (cache block, offset) of each new token
    expect: np.ndarray  # [B, heads * head_dim]
    expect_k: np.ndarray
    expect_v: np.ndarray

    @classmethod
    def make(cls, rng: np.random.Generator, cfg, lengths: list[int]) -> AppendCase:
        b = len(lengths)
        tables, k_cache, v_cache = paged_fp16(rng, cfg, lengths)
        positions = np.array(lengths, np.int32) - 1
        new_rows = tables[np.arange(b), positions // cfg.block_size], positions % cfg.block_size
        k_cache[new_rows] = v_cache[new_rows] = np.nan
        qkv = half(rng, b, cfg.qkv_size)
        expect_k, expect_v = k_cache.astype(np.float64), v_cache.astype(np.float64)
        q = ref.rope_kv_append(cfg, qkv, positions, tables, expect_k, expect_v)
        expect = ref.paged_attention(q, expect_k, expect_v, tables, positions + 1).reshape(b, -1)
        return cls(tables, k_cache, v_cache, positions, qkv, new_rows, expect, expect_k,
                   expect_v)

    def check(self, attn: np.ndarray, got_k: np.ndarray, got_v: np.ndarray) -> None:
        """The attention, the appended rows, and every other cache row untouched (NaN bits
        included)."""
        rows = self.new_rows
        assert np.isfinite(attn).all()
        assert rel_err(attn, self.expect) < FP16_TOL
        assert rel_err(got_k[rows], self.expect_k[rows]) < FP16_TOL
        np.testing.assert_array_equal(got_v[rows], self.expect_v[rows].astype(np.float16))
        for got, before in ((got_k, self.k_cache), (got_v, self.v_cache)):
            rest = before.copy()
            rest[rows] = got[rows]
            np.testing.assert_array_equal(got.view(np.uint16), rest.view(np.uint16))


def reference_step(cfg, weights, tokens, positions, tables, k_cache, v_cache):
    """Float64 logits of one step over caches that hold ``k_cache``/``v_cache`` in every
    layer, and the K cache the step leaves behind (all layers)."""
    k_ref = np.stack([k_cache.astype(np.float64)] * cfg.num_layers)
    v_ref = np.stack([v_cache.astype(np.float64)] * cfg.num_layers)
    logits = ref.decode_step(cfg, weights, tokens, positions, tables, k_ref, v_ref)
    return logits, k_ref


def assert_greedy_where_clear(got: np.ndarray, logits: np.ndarray, min_gap: float) -> None:
    """Sampled tokens equal the reference argmax on every row whose top-2 logits differ by
    more than ``min_gap`` (elsewhere the argmax is decided by rounding)."""
    top2 = np.sort(logits, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > min_gap
    np.testing.assert_array_equal(got[clear], ref.greedy(logits)[clear])
