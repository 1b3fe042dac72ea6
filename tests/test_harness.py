"""The benchmark harness itself (bench/): byte counts, CSV, atomic writes, plots, agreement, skips.

Fast and CPU-only: no test here times anything or asserts on a timing.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from torch.nn import functional

from bench import bench_losses, measure, report
from bench.cases import (
    LOSSES,
    PEER_SHAPES,
    PRESETS,
    Case,
    Implementation,
    UnavailableError,
    bytes_moved,
    generate_cases,
    load_implementation,
    make_inputs,
)
from reference.tolerance import tolerance

# --- Byte formulas ----------------------------------------------------------------------------


def test_bytes_of_cross_entropy_by_hand() -> None:
    # 8 x 10 fp32: logits 8*10*4 = 320 B, int64 targets 8*8 = 64 B, the scalar loss 4 B.
    assert bytes_moved("cross_entropy", 8, 10, "fp32", "forward") == 320 + 64 + 4
    # Backward adds the gradient (320 B) and reads the scalar upstream gradient (4 B).
    assert bytes_moved("cross_entropy", 8, 10, "fp32", "forward_backward") == 388 + 320 + 4


def test_bytes_of_sigmoid_losses_by_hand() -> None:
    # 4 x 3 bf16: logits 24 B, targets in the logits' dtype 24 B, loss 2 B; gradient 24 B + 2 B.
    for loss in ("binary_cross_entropy_with_logits", "sigmoid_focal_loss"):
        assert bytes_moved(loss, 4, 3, "bf16", "forward") == 50
        assert bytes_moved(loss, 4, 3, "bf16", "forward_backward") == 76
    # The peer table's 8192 x 16384 bf16 BCE: 2 x 256 MiB in, 256 MiB gradient out.
    big = bytes_moved("binary_cross_entropy_with_logits", 8192, 16384, "bf16", "forward_backward")
    assert big == 3 * 8192 * 16384 * 2 + 2 * 2


# --- Cases and presets ------------------------------------------------------------------------


def test_full_preset_covers_the_peer_shapes_and_the_class_range() -> None:
    preset = PRESETS["full"]
    for family, shapes in PEER_SHAPES.items():
        assert set(shapes) <= set(preset.shapes[family])
    classes = {c for shapes in preset.shapes.values() for _, c in shapes}
    assert min(classes) == 2 and max(classes) == 262144
    assert {"bf16", "fp32"} <= set(preset.dtypes)


def test_quick_preset_has_fp32_bf16_and_small_to_large_class_counts() -> None:
    preset = PRESETS["quick"]
    assert {"fp32", "bf16"} <= set(preset.dtypes)
    assert {10, 1000, 32768} <= {c for _, c in preset.shapes["softmax"]}


def test_cases_put_peer_shapes_first_and_cover_every_combination() -> None:
    cases = generate_cases(PRESETS["full"], tuple(LOSSES), ("torch", "triton"), ("bf16",))
    assert len({case.id for case in cases}) == len(cases)
    first = cases[0]
    assert (first.batch, first.classes) in PEER_SHAPES[first.spec.family]
    softmax_shapes = len(PRESETS["full"].shapes["softmax"])
    ce_cases = [case for case in cases if case.loss == "cross_entropy"]
    assert len(ce_cases) == softmax_shapes * 2 * 2  # shapes x passes x impls


def test_size_options_replace_the_preset_grid() -> None:
    quick = PRESETS["quick"]
    cases = generate_cases(quick, ("cross_entropy",), ("torch",), ("fp32",), (3, 5), (7,))
    assert {(case.batch, case.classes) for case in cases} == {(3, 7), (5, 7)}


def test_inputs_are_random_and_shaped_per_family() -> None:
    case = Case("sigmoid_focal_loss", "torch", "bf16", 6, 5, "forward_backward")
    logits, target = make_inputs(case, torch.device("cpu"))
    assert logits.shape == target.shape == (6, 5) and logits.dtype == torch.bfloat16
    assert logits.requires_grad and logits.std() > 0.5 and set(target.unique().tolist()) <= {0, 1}
    case = Case("cross_entropy", "torch", "fp32", 6, 5, "forward")
    logits, target = make_inputs(case, torch.device("cpu"), batch=2)
    assert logits.shape == (2, 5) and target.shape == (2,) and not logits.requires_grad


# --- Skips with a reason ----------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the reason given without a GPU")
def test_liger_without_gpu_is_unavailable_with_a_reason() -> None:
    with pytest.raises(UnavailableError, match="needs a CUDA GPU"):
        load_implementation("cross_entropy", "liger")


def test_liger_has_no_focal_loss_and_says_so() -> None:
    with pytest.raises(UnavailableError, match="Liger-Kernel has no softmax_focal_loss"):
        load_implementation("softmax_focal_loss", "liger")


def test_missing_module_is_unavailable_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    def missing(name: str):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(UnavailableError, match=r"kernels\.softmax cannot be imported"):
        load_implementation("cross_entropy", "triton")


# --- Agreement --------------------------------------------------------------------------------


def _loss_and_grad(function, logits: torch.Tensor, target: torch.Tensor):
    logits = logits.detach().requires_grad_()
    loss = function(logits, target)
    loss.backward()
    return logits, loss.detach(), logits.grad


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "chunked-and-sampled"])
def test_agreement_passes_torch_and_catches_a_wrong_gradient(
    chunked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if chunked:  # Force the bounded-memory path: several chunks, a sample of gradient rows.
        monkeypatch.setattr(measure, "CHECK_CHUNK_ELEMENTS", 64)
        monkeypatch.setattr(measure, "GRADIENT_CHECK_ELEMENTS", 96)
    spec = LOSSES["cross_entropy"]
    logits = torch.randn(40, 7)
    target = torch.randint(0, 7, (40,))
    logits, loss, grad = _loss_and_grad(functional.cross_entropy, logits, target)
    right = measure.check_agreement(spec, torch.float32, logits, target, loss, grad)
    assert right.passed and right.gradient_rows == (13 if chunked else 40)

    def wrong_gradient(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # The right value, but the gradient of the last row is doubled (a row-offset bug).
        doubled = torch.ones_like(x)
        doubled[-1] = 2
        scaled = x * doubled
        return functional.cross_entropy(x.detach() + (scaled - scaled.detach()), y)

    logits, loss, grad = _loss_and_grad(wrong_gradient, logits, target)
    wrong = measure.check_agreement(spec, torch.float32, logits, target, loss, grad)
    assert wrong.loss_error <= tolerance(torch.float32)
    assert not wrong.passed and wrong.grad_error > 0.01


class _FakeBenchmark:
    """Stands in for pytest-benchmark's fixture: a case that disagrees must never be timed."""

    enabled = True

    def pedantic(self, *args, **kwargs):
        raise AssertionError("a disagreeing case was timed")


class _FakeSession:
    device = torch.device("cpu")
    preset = PRESETS["tiny"]


def test_a_wrong_implementation_fails_its_case_before_timing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def off_by_one_percent(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 1.01 * functional.binary_cross_entropy_with_logits(x, y)

    wrong = Implementation("wrong", off_by_one_percent)
    monkeypatch.setattr(bench_losses, "load_implementation", lambda loss, impl: wrong)
    case = Case("binary_cross_entropy_with_logits", "wrong", "fp32", 16, 10, "forward_backward")
    outcome = bench_losses.measure(case, _FakeSession(), _FakeBenchmark())
    metrics = {name: value for name, value, *_ in outcome.metrics}
    assert outcome.fail and "disagrees with the float64 reference" in outcome.fail
    assert metrics["agreement"] == 0 and metrics["loss_rel_error"] == pytest.approx(0.01, rel=1e-3)


class _RecordingBenchmark:
    """Stands in for pytest-benchmark's fixture with --benchmark-disable: counts the calls."""

    enabled = False

    def __init__(self) -> None:
        self.calls = 0

    def pedantic(self, target, setup, rounds: int) -> None:
        setup()
        target()
        self.calls += 1


def test_a_disagreeing_peer_is_timed_and_reported_as_expected_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def off_by_one_percent(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 1.01 * functional.cross_entropy(x, y)

    peer = Implementation("torch", off_by_one_percent, peer=True)
    monkeypatch.setattr(bench_losses, "load_implementation", lambda loss, impl: peer)
    case = Case("cross_entropy", "torch", "fp32", 16, 10, "forward")
    benchmark = _RecordingBenchmark()
    outcome = bench_losses.measure(case, _FakeSession(), benchmark)
    assert outcome.fail is None and "disagrees" in outcome.xfail
    assert benchmark.calls == 1
    assert {name for name, *_ in outcome.metrics} >= {"agreement", "peak_memory", "bytes"}


# --- Peak memory on the CPU -------------------------------------------------------------------


def test_cpu_peak_memory_sees_a_known_allocation_and_not_the_inputs() -> None:
    mebibytes_32 = 8 * 2**20  # float32 elements in 32 MiB
    inputs = torch.ones(2 * mebibytes_32)  # 64 MiB allocated before: must not count

    def step() -> None:
        first = torch.ones(mebibytes_32)
        second = first * 2  # both alive: 64 MiB
        del first, second
        third = torch.ones(mebibytes_32 // 2)  # 16 MiB after the frees: below the peak
        del third
        inputs.mul_(1)

    peak = measure.cpu_allocation_peak(step)
    assert 64 * 2**20 <= peak < 65 * 2**20


# --- CSV, atomic writes -----------------------------------------------------------------------

PROVENANCE = {
    "run_date": "2026-01-01T00:00:00Z",
    "device": "cpu",
    "device_name": "Test CPU",
    "torch": "2.x",
    "triton": "3.x",
    "python": "3.11",
    "git_commit": "abc",
}


def _case(impl: str, batch: int, classes: int, pass_: str = "forward_backward") -> dict:
    return {
        "loss": "cross_entropy",
        "impl": impl,
        "dtype": "fp32",
        "batch": batch,
        "classes": classes,
        "pass": pass_,
    }


def test_csv_has_the_documented_columns_and_units(tmp_path: Path) -> None:
    results = report.ResultsFile(tmp_path, PROVENANCE)
    results.record(_case("torch", 8, 10), [("time_median", 2.0), ("skipped", None, "why")])
    results.write()
    frame = report.load_results(tmp_path)
    assert list(frame.columns) == report.COLUMNS
    assert set(frame["unit"].fillna("")) == {"ms", ""}
    assert frame.loc[frame["metric"] == "skipped", "note"].item() == "why"
    readme = (Path(__file__).parent.parent / "results" / "README.md").read_text()
    for column in report.COLUMNS:
        assert f"`{column}`" in readme, f"results/README.md does not document {column}"
    for metric in report.UNITS:
        assert f"`{metric}`" in readme, f"results/README.md does not document {metric}"


def test_a_new_run_replaces_its_cases_and_keeps_the_others(tmp_path: Path) -> None:
    first = report.ResultsFile(tmp_path, PROVENANCE)
    first.record(_case("torch", 8, 10), [("time_median", 2.0)])
    first.record(_case("triton", 8, 10), [("time_median", 1.0)])
    first.write()
    second = report.ResultsFile(tmp_path, {**PROVENANCE, "run_date": "2026-02-02T00:00:00Z"})
    second.record(_case("triton", 8, 10), [("time_median", 0.5)])
    second.write()
    frame = report.load_results(tmp_path).set_index("impl")
    assert frame.at["torch", "value"] == 2.0
    assert frame.at["torch", "run_date"].startswith("2026-01")
    assert frame.at["triton", "value"] == 0.5
    assert frame.at["triton", "run_date"].startswith("2026-02")


def test_a_rerun_that_only_skips_a_case_keeps_its_earlier_measurements(tmp_path: Path) -> None:
    first = report.ResultsFile(tmp_path, PROVENANCE)
    first.record(_case("triton", 8, 10), [("time_median", 1.0), ("agreement", 1)])
    first.write()
    second = report.ResultsFile(tmp_path, {**PROVENANCE, "run_date": "2026-02-02T00:00:00Z"})
    second.record(_case("triton", 8, 10), [("skipped", None, "time budget")])
    second.record(_case("torch", 8, 10), [("skipped", None, "time budget")])
    second.write()
    frame = report.load_results(tmp_path)
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
    report.write_atomically(path, "earlier results\n")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, failing, interrupted)
    with pytest.raises(KeyboardInterrupt):
        report.write_atomically(path, "half of the new results")
    monkeypatch.undo()
    assert path.read_text() == "earlier results\n"
    assert os.listdir(tmp_path) == ["benchmarks.csv"]  # no temporary file left behind


def test_provenance_columns_are_read_as_text(tmp_path: Path) -> None:
    commits = {"1234567e8901": 10, "123456789012": 20}
    for commit, classes in commits.items():
        results = report.ResultsFile(tmp_path, {**PROVENANCE, "git_commit": commit})
        results.record(_case("torch", 8, classes), [("time_median", 1.0)])
        results.write()
    frame = report.load_results(tmp_path)
    assert frame.set_index("classes")["git_commit"].to_dict() == {
        classes: commit for commit, classes in commits.items()
    }
    assert "git_commit 123456789012, 1234567e8901" in report.summary_markdown(frame)


def test_a_csv_with_other_columns_is_refused(tmp_path: Path) -> None:
    (tmp_path / report.CSV_NAME).write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="expected"):
        report.ResultsFile(tmp_path, PROVENANCE)


# --- Plots and summary from a hand-made CSV ---------------------------------------------------


def _hand_made_results(folder: Path) -> None:
    """torch eager at 2 ms everywhere, triton at 0.5 ms (4x) except 1 ms (2x) at 64 x 1000."""
    results = report.ResultsFile(folder, PROVENANCE)
    for batch in (8, 64):
        for classes in (10, 1000):
            for impl, milliseconds in (("torch", 2.0), ("triton", 0.5)):
                if impl == "triton" and (batch, classes) == (64, 1000):
                    milliseconds = 1.0
                moved = bytes_moved("cross_entropy", batch, classes, "fp32", "forward_backward")
                gbps = moved / milliseconds / 1e6
                metrics = [
                    ("time_median", milliseconds),
                    ("bytes", moved),
                    ("throughput", gbps),
                    ("copy_bandwidth", 10.0),
                    ("roofline_fraction", gbps / 10.0),
                    ("peak_memory", batch * classes * 4 * (3 if impl == "torch" else 1)),
                    ("loss_rel_error", 1e-7),
                    ("grad_rel_error", 2e-7),
                    ("tolerance", 1e-5),
                    ("agreement", 1),
                ]
                results.record(_case(impl, batch, classes), metrics)
    results.record(_case("liger", 8, 10), [("skipped", None, "Liger-Kernel needs a CUDA GPU")])
    results.write()


def test_plots_and_summary_are_regenerated_from_the_csv_alone(tmp_path: Path) -> None:
    _hand_made_results(tmp_path)
    written = report.regenerate(tmp_path)
    names = {path.name for path in written}
    assert names == {
        "throughput_cross_entropy_fp32.png",
        "speedup_cross_entropy_fp32.png",
        "peak_memory_cross_entropy_fp32.png",
        "SUMMARY.md",
    }
    for path in written:
        assert path.exists() and path.stat().st_size > 1000
    summary = (tmp_path / "SUMMARY.md").read_text()
    assert "Test CPU" in summary
    best = [line for line in summary.splitlines() if "| forward_backward | 64 x 1000 |" in line]
    assert len(best) == 1 and "**triton**" in best[0] and "triton 2.00x" in best[0]
    assert "| cross_entropy | triton | PASS |" in summary
    assert "Liger-Kernel needs a CUDA GPU" in summary


def test_regenerate_deletes_plots_the_csv_no_longer_backs(tmp_path: Path) -> None:
    stale = tmp_path / report.PLOTS_DIR / "throughput_sigmoid_focal_loss_bf16.png"
    stale.parent.mkdir()
    stale.write_bytes(b"a plot of rows that are gone")
    _hand_made_results(tmp_path)
    written = report.regenerate(tmp_path)
    assert not stale.exists()
    on_disk = set((tmp_path / report.PLOTS_DIR).iterdir())
    assert on_disk == {path for path in written if path.suffix == ".png"}


def test_headline_table_shows_speedups_and_copy_fractions(tmp_path: Path) -> None:
    _hand_made_results(tmp_path)
    table = report.headline_table(report.load_results(tmp_path))
    # No peer shape was measured: the largest shape, 64 x 1000, where triton is 2x.
    assert "| cross_entropy | fp32 | 64 x 1000 | 2 ms | 2.00x" in table


def test_speedups_and_copy_bandwidth_never_mix_runs(tmp_path: Path) -> None:
    first = report.ResultsFile(tmp_path, PROVENANCE)
    for impl, milliseconds in (("torch", 2.0), ("triton", 0.5)):
        first.record(_case(impl, 8, 10), [("time_median", milliseconds), ("copy_bandwidth", 10.0)])
    first.write()
    second_date = "2026-02-02T00:00:00Z"
    second = report.ResultsFile(tmp_path, {**PROVENANCE, "run_date": second_date})
    second.record(_case("torch", 8, 10), [("time_median", 1.0), ("copy_bandwidth", 20.0)])
    second.write()
    frame = report.load_results(tmp_path)
    wide = report.case_table(frame).set_index("impl")
    # triton's torch eager (2 ms) was replaced by another run's: no speedup across runs.
    assert math.isnan(wide.at["triton", "torch_ms"])
    assert wide.at["torch", "speedup"] == 1.0
    summary = report.summary_markdown(frame)
    assert "triton 4.00x" not in summary and "triton 2.00x" not in summary
    assert f"per run: {PROVENANCE['run_date']} 10.0 GB/s, {second_date} 20.0 GB/s" in summary
    assert "15.0 GB/s" not in summary


def test_summary_lists_a_disagreeing_case(tmp_path: Path) -> None:
    results = report.ResultsFile(tmp_path, PROVENANCE)
    metrics = [("loss_rel_error", 0.5), ("grad_rel_error", 0.5), ("tolerance", 1e-5)]
    results.record(_case("triton", 8, 10), [*metrics, ("agreement", 0)])
    results.write()
    summary = report.summary_markdown(report.load_results(tmp_path))
    assert "**FAIL** (1 of 1)" in summary and "cross_entropy triton fp32 8 x 10" in summary


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
    assert report.device_slug(name) == slug


def test_gradient_rows_sample_includes_the_last_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(measure, "GRADIENT_CHECK_ELEMENTS", 100)
    rows = measure.gradient_rows(1000, 10, torch.device("cpu"))
    assert len(rows) == 10 and rows[-1] == 999
    assert torch.equal(rows, rows.sort().values) and len(rows.unique()) == 10
    assert measure.gradient_rows(5, 10, torch.device("cpu")).tolist() == [0, 1, 2, 3, 4]
