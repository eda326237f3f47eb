"""schedbench: how much of an LLM decode step is CPU scheduling overhead, measured."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"


class _CheckoutKernels(importlib.abc.MetaPathFinder):
    """``schedbench.kernels`` from a checkout that is on ``sys.path`` but not installed
    (``PYTHONPATH=.``, as on a lent GPU machine): the repository's top-level ``kernels/``
    folder, which a wheel or an editable install maps to that name (pyproject's package-dir).
    Last on the meta path, so that an install's own mapping always wins."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "schedbench.kernels":
            return None
        return importlib.util.spec_from_file_location(
            fullname, self.folder / "__init__.py", submodule_search_locations=[str(self.folder)])


def _checkout_kernels() -> Path | None:
    root = Path(__file__).resolve().parent.parent
    folder = root / "kernels"
    # pyproject.toml tells a checkout from site-packages, where a top-level kernels/ is
    # Hugging Face's package, never ours.
    if (root / "pyproject.toml").is_file() and (folder / "backend.py").is_file():
        return folder
    return None


if (_folder := _checkout_kernels()) and not any(
        isinstance(f, _CheckoutKernels) for f in sys.meta_path):
    sys.meta_path.append(_CheckoutKernels(_folder))
