"""The README's commands, run as a newcomer runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT, copy_of_tree


def readme_block(after: str) -> list[str]:
    """The commands of the first ```sh block after the line that starts with ``after``."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(after))
    opening = lines.index("```sh", start)
    return lines[opening + 1:lines.index("```", opening)]


def test_the_readme_stays_a_newcomers_length():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_every_file_the_readme_links_exists():
    text = (ROOT / "README.md").read_text()
    links = [part.split(")")[0] for part in text.split("](")[1:]]
    local = [link for link in links if not link.startswith("http")]
    assert local and [link for link in local if not (ROOT / link).exists()] == []


@pytest.mark.slow
def test_the_readme_asv_commands_publish_a_site_with_data(tmp_path, checkout_head):
    """asv 0.6 saves nothing under --python=same without a commit to file it under: a site
    from commands that forget it publishes empty, and exits 0 all the same."""
    commands = [c for c in readme_block("From a clone, record this commit") if "preview" not in c]
    assert any("asv run" in c for c in commands) and any("asv publish" in c for c in commands)
    tree = copy_of_tree(tmp_path / "clone")
    shutil.copytree(ROOT / ".git", tree / ".git", symlinks=True)
    (tree / ".venv").symlink_to(ROOT / ".venv")
    env = {**os.environ, "HOME": str(tmp_path)}  # asv's machine file, not the user's
    for command in commands:
        run = subprocess.run(["bash", "-c", command], cwd=tree, env=env, capture_output=True,
                             text=True, timeout=1200)
        assert run.returncode == 0, f"{command}\n{run.stdout}\n{run.stderr}"
        failed = [line for line in run.stdout.splitlines() if line.endswith(" failed")]
        assert failed == [], f"{command}: a benchmark failed\n" + "\n".join(failed)
    html = tree / ".asv" / "html"
    index = json.loads((html / "index.json").read_text())
    name = "bench_overhead.Overhead.track_overhead_pct"
    assert name in index["benchmarks"] and checkout_head in index["revision_to_hash"].values()
    graphs = list(html.glob(f"graphs/**/{name}.json"))
    assert graphs, "no graph data file for the overhead benchmark"
    points = [p for g in graphs for p in json.loads(g.read_text())]
    values = [v for _, vs in points for v in (vs if isinstance(vs, list) else [vs])]
    assert any(isinstance(v, float) and v > 0 for v in values), points
