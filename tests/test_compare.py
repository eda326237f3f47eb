"""``python -m schedbench.compare``: two --json results side by side."""

from __future__ import annotations

import copy
import json

import pytest

from schedbench.__main__ import main as run_sweep
from schedbench.compare import FIGURES, main
from tests.conftest import fast_sweep

FAST = fast_sweep(repeats=2)


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("compare") / "a.json"
    assert run_sweep([*FAST, "--batch-sizes", "1,2", "--json", str(path)]) == 0
    return json.loads(path.read_text())


def write(tmp_path, name: str, doc: dict):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def rows(text: str) -> dict[tuple[str, int], list[str]]:
    table = text.split("\n\n")[1].splitlines()[2:]
    cells = [[c.strip() for c in line.split("|")] for line in table]
    return {(c[0], int(c[1])): c[2:] for c in cells}


def test_a_result_against_itself_is_unchanged_and_the_same_tokens(tmp_path, capsys, result):
    a = write(tmp_path, "a.json", result)
    assert main([str(a), str(a)]) == 0
    text = capsys.readouterr().out
    assert f"A: {a}: backend cpu on " in text and "Differences" not in text
    got = rows(text)
    assert set(got) == {(r["mode"], r["batch_size"]) for r in result["runs"]}
    for r in result["runs"]:
        step = f"{r['step_ms']:.3f}"
        assert got[r["mode"], r["batch_size"]] == [
            step, step, "+0.0% ~", *[f"{r['overhead_pct']:.1f}"] * 2,
            *[f"{r['tokens_per_s']:.0f}"] * 2, "+0.0% ~", "same"]


def test_a_change_beyond_the_repeats_is_unmarked_and_other_tokens_differ(tmp_path, capsys,
                                                                         result):
    slower = copy.deepcopy(result)
    run = slower["runs"][0]
    run["step_ms"] *= 1.5
    run["spread"]["step_ms"] = {"min": run["step_ms"], "max": run["step_ms"]}
    run["tokens_sha256"] = "0" * 64
    a, b = write(tmp_path, "a.json", result), write(tmp_path, "b.json", slower)
    assert main([str(a), str(b)]) == 0
    got = rows(capsys.readouterr().out)[run["mode"], run["batch_size"]]
    assert got[2] == "+50.0%" and got[-1] == "differ"


def test_other_settings_are_listed_and_tokens_not_compared(tmp_path, capsys, result):
    other = copy.deepcopy(result)
    other["config"]["steps"] = 99
    other["runs"] = [r for r in other["runs"] if r["batch_size"] == 1]
    a, b = write(tmp_path, "a.json", result), write(tmp_path, "b.json", other)
    assert main([str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "Differences: steps: 12 -> 99" in text
    assert {cells[-1] for cells in rows(text).values()} == {"-"}
    assert "Not compared: sequential batch 2 only in A; overlapped batch 2 only in A" in text


def test_a_timing_only_setting_still_compares_tokens(tmp_path, capsys, result):
    knob = copy.deepcopy(result)
    knob["config"]["extra_us_per_request"] = 50.0
    assert main([str(write(tmp_path, "a.json", result)),
                 str(write(tmp_path, "b.json", knob))]) == 0
    text = capsys.readouterr().out
    assert "Differences: extra_us_per_request: 0.0 -> 50.0" in text
    assert {cells[-1] for cells in rows(text).values()} == {"same"}


def test_a_side_with_one_repeat_is_named(tmp_path, capsys, result):
    single = copy.deepcopy(result)
    single["config"]["repeats"] = 1
    a = write(tmp_path, "a.json", result)
    assert main([str(a), str(write(tmp_path, "b.json", single))]) == 0
    assert "B ran one repeat: its ranges are single points" in capsys.readouterr().out
    assert main([str(a), str(a)]) == 0
    assert "ran one repeat" not in capsys.readouterr().out


def test_no_run_in_common_exits_1(tmp_path, capsys, result):
    other = copy.deepcopy(result)
    for r in other["runs"]:
        r["batch_size"] += 100
    assert main([str(write(tmp_path, "a.json", result)),
                 str(write(tmp_path, "b.json", other))]) == 1
    assert "No (mode, batch size) run is in both files." in capsys.readouterr().out


@pytest.mark.parametrize(("text", "message"), [
    (None, "cannot read"),
    ("{", "not JSON"),
    ('{"traceEvents": []}', "not a schedbench result"),
])
def test_a_file_that_is_not_a_result_is_named_with_exit_2(tmp_path, capsys, result, text,
                                                           message):
    good = write(tmp_path, "a.json", result)
    bad = tmp_path / "bad.json"
    if text is not None:
        bad.write_text(text)
    with pytest.raises(SystemExit) as exc:
        main([str(good), str(bad)])
    assert exc.value.code == 2
    assert f"{bad}: {message}" in capsys.readouterr().err


def shifted(result: dict, factor: float, sha: str | None = None, width: float = 0.05) -> dict:
    """The result as another process might have measured it: every step time scaled, its
    repeats within ``width`` of it."""
    doc = copy.deepcopy(result)
    for r in doc["runs"]:
        r["step_ms"] *= factor
        r["spread"]["step_ms"] = {"min": (1 - width) * r["step_ms"],
                                  "max": (1 + width) * r["step_ms"]}
        r["tokens_sha256"] = sha or r["tokens_sha256"]
    return doc


def test_each_side_pools_its_processes(tmp_path, capsys, result):
    a = [write(tmp_path, f"a{i}.json", shifted(result, f)) for i, f in enumerate((1, 1.3, 1.1))]
    b = write(tmp_path, "b.json", shifted(result, 2.0))
    assert main([*map(str, a), "vs", str(b)]) == 0
    text = capsys.readouterr().out
    assert f"A: {a[0]}, {a[1]}, {a[2]}: backend cpu" in text
    assert "median of 3 processes' medians of 2 repeat(s) each; spread is the min and max " \
           "of the values that median is taken over" in text
    assert "B is one process, whose repeats share its machine state" in text
    got = rows(text)
    for r in result["runs"]:
        cells = got[r["mode"], r["batch_size"]]
        assert cells[0] == f"{r['step_ms'] * 1.1:.3f}"  # the median of the three processes
        assert cells[1] == f"{r['step_ms'] * 2.0:.3f}"
        assert cells[-1] == "same"
        # A's range (its processes, 1x to 1.3x) stays below B's (its repeats, 1.9x to 2.1x)
        assert cells[2] == f"{100 * (2.0 / 1.1 - 1):+.1f}%"
    # a second process of B's, at 1.25x, widens its range to reach A's: the change is noise
    b2 = write(tmp_path, "b2.json", shifted(result, 1.25))
    assert main([*map(str, a), "vs", str(b), str(b2)]) == 0
    text = capsys.readouterr().out
    assert "one process" not in text
    assert all(cells[2].endswith("~") for cells in rows(text).values())


def test_a_pooled_range_is_the_processes_not_their_repeats(tmp_path, capsys, result):
    """Each side's processes agree within 10 %, the sides differ by 50 %: that is a change,
    however widely the repeats within one process scattered."""
    a = [write(tmp_path, f"a{f}.json", shifted(result, f, width=0.5)) for f in (1.0, 1.1)]
    b = [write(tmp_path, f"b{f}.json", shifted(result, f)) for f in (1.5, 1.6)]
    assert main([*map(str, a), "vs", *map(str, b)]) == 0
    assert {cells[2] for cells in rows(capsys.readouterr().out).values()} == {
        f"{100 * (1.55 / 1.05 - 1):+.1f}%"}


def test_a_side_whose_processes_disagree_on_tokens_differs(tmp_path, capsys, result):
    a = write(tmp_path, "a.json", result)
    odd = write(tmp_path, "odd.json", shifted(result, 1.0, sha="0" * 64))
    for args in ([a, "vs", a, odd], [a, odd, "vs", odd, a]):
        assert main(list(map(str, args))) == 0
        assert {cells[-1] for cells in rows(capsys.readouterr().out).values()} == {"differ"}


def test_a_side_of_different_configurations_is_refused(tmp_path, capsys, result):
    other = copy.deepcopy(result)
    other["config"]["steps"] = 99
    a, o = write(tmp_path, "a.json", result), write(tmp_path, "o.json", other)
    with pytest.raises(SystemExit) as exc:
        main([str(a), str(o), "vs", str(a)])
    assert exc.value.code == 2
    assert f"{o} is not a run of what {a} ran (steps: 12 -> 99)" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["a.json"], ["a.json", "b.json", "c.json"],
                                  ["a.json", "vs"], ["vs", "b.json"],
                                  ["a.json", "vs", "b.json", "vs", "c.json"]])
def test_sides_that_are_not_two_are_refused(capsys, args):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert "give" in capsys.readouterr().err


def test_a_file_written_with_processes_counts_as_that_many(tmp_path, capsys, result):
    pooled = copy.deepcopy(result)
    pooled["config"]["processes"] = 3
    a, b, one = (write(tmp_path, "a.json", pooled), write(tmp_path, "b.json", pooled),
                 write(tmp_path, "one.json", result))
    assert main([str(a), str(b)]) == 0
    assert "one process" not in capsys.readouterr().out
    assert main([str(a), str(one)]) == 0
    text = capsys.readouterr().out
    assert "B is one process" in text and "Differences" not in text  # each line says it
    assert {cells[-1] for cells in rows(text).values()} == {"same"}  # timing only



def test_a_side_pools_every_process_of_its_files(tmp_path, capsys, result):
    """A --processes 2 file (1.0x and 1.4x) and a one-process file (1.1x): the side is the
    median of the three processes, 1.1x, not the median of the two files, 1.15x."""
    two = shifted(result, 1.2)
    two["config"]["processes"] = 2
    for run, base in zip(two["runs"], result["runs"]):
        run["process_medians"] = {name: [base[name], base[name]] for name, *_ in FIGURES}
        run["process_medians"]["step_ms"] = [base["step_ms"], 1.4 * base["step_ms"]]
    files = [write(tmp_path, "two.json", two), write(tmp_path, "one.json", shifted(result, 1.1))]
    assert main([*map(str, files), "vs", str(files[1])]) == 0
    text = capsys.readouterr().out
    assert "median of 3 processes' medians of 2 repeat(s) each" in text
    for r in result["runs"]:
        assert rows(text)[r["mode"], r["batch_size"]][0] == f"{r['step_ms'] * 1.1:.3f}"
