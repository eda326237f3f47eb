"""The wheel that asv installs (asv.conf.json's build_command) carries the CUDA C sources:
the CuPy backend reads them at run time, so a wheel without them fails only on a GPU."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import ROOT


def test_the_wheel_carries_every_cuda_source(tmp_path: Path) -> None:
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources it builds.
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("kernels", "schedbench"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-w", str(tmp_path), str(src)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    assert "absent from the `packages` configuration" not in built.stdout + built.stderr
    (wheel,) = tmp_path.glob("schedbench-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    sources = {f"kernels/cuda/{p.name}" for p in (ROOT / "kernels" / "cuda").iterdir()}
    assert sources, "no CUDA sources found to check"
    assert sources <= shipped, f"missing from the wheel: {sorted(sources - shipped)}"
