"""The results files (lossbench.bench.results) and their provenance (.provenance)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lossbench.bench import provenance
from lossbench.bench.results import (
    BENCHMARKS_CSV,
    COLUMNS,
    UNITS,
    ResultsFile,
    ResultsFolderError,
    check_writable,
    load_results,
    write_atomically,
)
from lossbench.bench.summary import summary_markdown

from .helpers import PROVENANCE, REPOSITORY_ROOT
from .helpers import benchmark_case as _case

# --- CSV, atomic writes -----------------------------------------------------------------------


def test_csv_has_the_documented_columns_and_units(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path, PROVENANCE)
    results.record(_case("torch", 8, 10), [("time_median", 2.0), ("skipped", None, "why")])
    results.write()
    frame = load_results(tmp_path)
    assert list(frame.columns) == COLUMNS
    assert set(frame["unit"].fillna("")) == {"ms", ""}
    assert frame.loc[frame["metric"] == "skipped", "note"].item() == "why"
    readme = (Path(__file__).parent.parent / "results" / "README.md").read_text()
    for column in COLUMNS:
        assert f"`{column}`" in readme, f"results/README.md does not document {column}"
    for metric in UNITS:
        assert f"`{metric}`" in readme, f"results/README.md does not document {metric}"


def test_a_new_run_replaces_its_cases_and_keeps_the_others(tmp_path: Path) -> None:
    first = ResultsFile(tmp_path, PROVENANCE)
    first.record(_case("torch", 8, 10), [("time_median", 2.0)])
    first.record(_case("triton", 8, 10), [("time_median", 1.0)])
    first.write()
    second = ResultsFile(tmp_path, {**PROVENANCE, "run_date": "2026-02-02T00:00:00Z"})
    second.record(_case("triton", 8, 10), [("time_median", 0.5)])
    second.write()
    frame = load_results(tmp_path).set_index("impl")
    assert frame.at["torch", "value"] == 2.0
    assert frame.at["torch", "run_date"].startswith("2026-01")
    assert frame.at["triton", "value"] == 0.5
    assert frame.at["triton", "run_date"].startswith("2026-02")


def test_a_rerun_that_only_skips_a_case_keeps_its_earlier_measurements(tmp_path: Path) -> None:
    first = ResultsFile(tmp_path, PROVENANCE)
    first.record(_case("triton", 8, 10), [("time_median", 1.0), ("agreement", 1)])
    first.write()
    second = ResultsFile(tmp_path, {**PROVENANCE, "run_date": "2026-02-02T00:00:00Z"})
    second.record(_case("triton", 8, 10), [("skipped", None, "time budget")])
    second.record(_case("torch", 8, 10), [("skipped", None, "time budget")])
    second.write()
    frame = load_results(tmp_path)
    triton = frame[frame["impl"] == "triton"].set_index("metric")
    assert sorted(triton.index) == ["agreement", "time_median"]
    assert triton.at["time_median", "value"] == 1.0
    assert triton.at["time_median", "run_date"].startswith("2026-01")
    # A case with no earlier measurement records its skip.
    torch_rows = frame[frame["impl"] == "torch"]
    assert torch_rows["metric"].tolist() == ["skipped"]
    assert torch_rows["note"].tolist() == ["time budget"]


def test_an_untimed_rerun_keeps_the_timed_result_but_a_failure_replaces_it(
    tmp_path: Path,
) -> None:
    first = ResultsFile(tmp_path, PROVENANCE)
    for impl in ("torch", "triton", "reference"):
        first.record(_case(impl, 8, 10), [("time_median", 1.0), ("agreement", 1)])
    first.write()
    second = ResultsFile(tmp_path, {**PROVENANCE, "run_date": "2026-02-02T00:00:00Z"})
    # --benchmark-disable: agreement checked, nothing timed. Kept, and counted as kept.
    second.record(_case("torch", 8, 10), [("agreement", 1), ("peak_memory", 0)])
    # A disagreement, and an exception, always replace what was there.
    second.record(_case("triton", 8, 10), [("agreement", 0)])
    second.record(_case("reference", 8, 10), [("error", None, "RuntimeError()")])
    second.write()
    assert len(second.kept) == 1
    frame = load_results(tmp_path)
    metrics = {impl: set(group["metric"]) for impl, group in frame.groupby("impl")}
    assert metrics == {
        "torch": {"time_median", "agreement"},
        "triton": {"agreement"},
        "reference": {"error"},
    }


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_an_interrupted_write_leaves_the_earlier_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    path = tmp_path / "benchmarks.csv"
    write_atomically(path, "earlier results\n")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, failing, interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, "half of the new results")
    monkeypatch.undo()
    assert path.read_text() == "earlier results\n"
    assert os.listdir(tmp_path) == ["benchmarks.csv"]  # no temporary file left behind


def test_provenance_columns_are_read_as_text(tmp_path: Path) -> None:
    commits = {"1234567e8901": 10, "123456789012": 20}
    for commit, classes in commits.items():
        results = ResultsFile(tmp_path, {**PROVENANCE, "git_commit": commit})
        results.record(_case("torch", 8, classes), [("time_median", 1.0)])
        results.write()
    frame = load_results(tmp_path)
    assert frame.set_index("classes")["git_commit"].to_dict() == {
        classes: commit for commit, classes in commits.items()
    }
    assert "git_commit 123456789012, 1234567e8901" in summary_markdown(frame)


def test_a_csv_with_other_columns_is_refused(tmp_path: Path) -> None:
    (tmp_path / BENCHMARKS_CSV).write_text("a,b\n1,2\n")
    with pytest.raises(ResultsFolderError, match="expected"):
        ResultsFile(tmp_path, PROVENANCE)


# --- Names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("NVIDIA H200", "h200"),
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA GeForce RTX 4090", "rtx4090"),
        (None, "cpu"),
    ],
)
def test_device_slug(name: str | None, slug: str) -> None:
    assert provenance.device_slug(name) == slug


# --- Writable folders and honest provenance ---------------------------------------------------


def test_a_folder_that_cannot_be_written_fails_at_once_with_one_clear_line(
    tmp_path: Path,
) -> None:
    in_the_way = tmp_path / "a file"
    in_the_way.write_text("not a folder")
    with pytest.raises(ResultsFolderError, match=r"cannot write results to .*a file/cpu"):
        check_writable(in_the_way / "cpu")
    check_writable(tmp_path / "new" / "cpu")  # a missing folder is made
    assert (tmp_path / "new" / "cpu").is_dir()


def test_the_benchmarks_refuse_an_unwritable_folder_before_running_anything(
    tmp_path: Path,
) -> None:
    in_the_way = tmp_path / "a file"
    in_the_way.write_text("not a folder")
    completed = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "bench/", "--collect-only", "-q"),
            *("-p", "no:cacheprovider", "--results-dir", str(in_the_way / "cpu")),
        ],
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == pytest.ExitCode.USAGE_ERROR
    assert "lossbench: cannot write results to" in completed.stderr
    assert "Traceback" not in completed.stdout + completed.stderr


def _git(folder: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True)


def test_git_commit_is_dirty_for_code_changes_and_not_for_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "benchmarks.csv").write_text("old\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    monkeypatch.setattr(provenance, "REPOSITORY_ROOT", tmp_path)
    monkeypatch.delenv("LOSSBENCH_GIT_COMMIT", raising=False)
    (tmp_path / "results" / "benchmarks.csv").write_text("rewritten by a run\n")
    assert not provenance.git_commit().endswith("+dirty")
    (tmp_path / "code.py").write_text("x = 2\n")
    assert provenance.git_commit().endswith("+dirty")


def test_a_csv_from_before_the_hidden_column_is_read_and_rewritten_with_it(
    tmp_path: Path,
) -> None:
    # The layout written before the linear loss: no `hidden` column. Its rows read as hidden 0,
    # a rerun of one case replaces that case's rows, and the file is rewritten with the column.
    from lossbench.bench.results import COLUMNS_BEFORE_HIDDEN

    earlier = {**PROVENANCE, **_case("torch", 8, 10), "metric": "time_median", "value": "2.0"}
    earlier.pop("hidden")
    row = [str(earlier.get(column, "")) for column in COLUMNS_BEFORE_HIDDEN]
    (tmp_path / BENCHMARKS_CSV).write_text(
        ",".join(COLUMNS_BEFORE_HIDDEN) + "\n" + ",".join(row) + "\n"
    )
    frame = load_results(tmp_path)
    assert list(frame.columns) == COLUMNS
    assert frame["hidden"].tolist() == [0] and frame["value"].tolist() == [2.0]
    results = ResultsFile(tmp_path, {**PROVENANCE, "run_date": "2026-02-02T00:00:00Z"})
    results.record(_case("triton", 8, 10), [("time_median", 1.0)])
    results.write()
    header = (tmp_path / BENCHMARKS_CSV).read_text().splitlines()[0]
    assert header.split(",") == COLUMNS
    frame = load_results(tmp_path)
    assert sorted(frame["impl"]) == ["torch", "triton"] and set(frame["hidden"]) == {0}
