"""The wheel that asv installs (asv.conf.json's build_command): it carries the CUDA C sources
(the CuPy backend reads them at run time, so a wheel without them fails only on a GPU), and
it installs the kernels/ folder as schedbench.kernels, beside Hugging Face's ``kernels``
(a dependency of transformers), which owns the bare name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources it builds.
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("kernels", "schedbench"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-w", str(tmp), str(src)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    assert "absent from the `packages` configuration" not in built.stdout + built.stderr
    (path,) = tmp.glob("schedbench-*.whl")
    return path


def test_the_wheel_carries_every_cuda_source(wheel: Path) -> None:
    shipped = set(zipfile.ZipFile(wheel).namelist())
    sources = {f"schedbench/kernels/cuda/{p.name}" for p in (ROOT / "kernels" / "cuda").iterdir()
               if p.suffix in (".cu", ".cuh")}
    assert sources, "no CUDA sources found to check"
    assert sources <= shipped, f"missing from the wheel: {sorted(sources - shipped)}"
    assert not any(name.startswith("kernels/") for name in shipped), "a top-level kernels/"


@pytest.mark.slow
def test_the_wheel_installs_beside_hugging_faces_kernels(wheel: Path, tmp_path: Path) -> None:
    """Both in one site: ``import kernels`` is Hugging Face's, and a sweep runs from ours."""
    site = tmp_path / "site"
    for what in (["kernels"], ["--no-deps", str(wheel)]):  # numpy and numba: this venv's
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target",
                              str(site), *what], capture_output=True, text=True)
        assert pip.returncode == 0, pip.stdout + pip.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    check = ("import kernels, schedbench.kernels.registry as r; "
             "print(kernels.__file__); print(r.__file__); print(hasattr(kernels, 'get_kernel'))")
    out = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    hf, ours, hf_api = out.stdout.split()
    assert hf == str(site / "kernels" / "__init__.py") and hf_api == "True"
    assert ours == str(site / "schedbench" / "kernels" / "registry.py")
    sweep = subprocess.run([sys.executable, "-c", "import kernels, runpy; "
                            "runpy.run_module('schedbench', run_name='__main__')",
                            "--backend", "cpu", "--batch-sizes", "1", "--steps", "12",
                            "--warmup", "2", "--repeats", "1", "--prompt-len", "1:4",
                            "--output-len", "4:10"],
                           cwd=tmp_path, env=env, capture_output=True, text=True)
    assert sweep.returncode == 0, sweep.stderr
    assert "Token streams: identical" in sweep.stdout
