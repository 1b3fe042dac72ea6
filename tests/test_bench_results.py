"""The results files (lossbench.bench.results) and their provenance (.provenance)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lossbench.bench import provenance
from lossbench.bench.results import (
    BENCHMARKS_CSV,
    COLUMNS,
    UNITS,
    ResultsFile,
    ResultsFolderError,
    load_results,
    write_atomically,
)
from lossbench.bench.summary import summary_markdown

from .helpers import PROVENANCE
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
