"""The report drawn from a results CSV alone: plots (lossbench.bench.plots), SUMMARY.md and the
headline table (.summary), and their redraw (.report)."""

from __future__ import annotations

import math
from pathlib import Path

from lossbench.bench import report
from lossbench.bench.cases import bytes_moved
from lossbench.bench.results import ResultsFile, case_table, load_results
from lossbench.bench.summary import headline_table, linear_headline_table, summary_markdown

from .helpers import PROVENANCE
from .helpers import benchmark_case as _case

# --- Plots and summary from a hand-made CSV ---------------------------------------------------


def _hand_made_results(folder: Path, spread: float = 0.02) -> None:
    """torch eager at 2 ms everywhere, triton at 0.5 ms (4x) except 1 ms (2x) at 64 x 1000;
    the timed calls spread by ``spread`` of the median, but triton's at 8 x 1000 by 60 %."""
    results = ResultsFile(folder, PROVENANCE)
    for batch in (8, 64):
        for classes in (10, 1000):
            for impl, milliseconds in (("torch", 2.0), ("triton", 0.5)):
                if impl == "triton" and (batch, classes) == (64, 1000):
                    milliseconds = 1.0
                width = 0.6 if (impl, batch, classes) == ("triton", 8, 1000) else spread
                moved = bytes_moved("cross_entropy", batch, classes, "fp32", "forward_backward")
                gbps = moved / milliseconds / 1e6
                metrics = [
                    ("time_median", milliseconds),
                    ("time_p20", milliseconds * (1 - width / 2)),
                    ("time_p80", milliseconds * (1 + width / 2)),
                    ("bytes", moved),
                    ("throughput", gbps),
                    ("copy_bandwidth", 10.0),
                    ("copy_fraction", gbps / 10.0),
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
    assert "| 1 ±1% |" in best[0]
    noisy = [line for line in summary.splitlines() if "| forward_backward | 8 x 1000 |" in line]
    assert "**triton** (noisy)" in noisy[0] and "triton noisy" in noisy[0]
    assert "4.00x" not in noisy[0]
    assert "| cross_entropy | triton | PASS |" in summary
    assert "Liger-Kernel needs a CUDA GPU" in summary


def test_regenerate_deletes_plots_the_csv_no_longer_backs(tmp_path: Path) -> None:
    stale = tmp_path / report.PLOTS_FOLDER / "throughput_sigmoid_focal_loss_bf16.png"
    stale.parent.mkdir()
    stale.write_bytes(b"a plot of rows that are gone")
    _hand_made_results(tmp_path)
    written = report.regenerate(tmp_path)
    assert not stale.exists()
    on_disk = set((tmp_path / report.PLOTS_FOLDER).iterdir())
    assert on_disk == {path for path in written if path.suffix == ".png"}


def test_headline_table_shows_speedups_and_copy_fractions(tmp_path: Path) -> None:
    _hand_made_results(tmp_path)
    table = headline_table(load_results(tmp_path))
    # No peer shape was measured: the largest shape, 64 x 1000, where triton is 2x.
    assert "| cross_entropy | fp32 | 64 x 1000 | 2 ms ±1% | 2.00x" in table


def test_no_speedup_is_headlined_from_a_noisy_time(tmp_path: Path) -> None:
    _hand_made_results(tmp_path, spread=0.5)  # torch eager spreads by 50 %: over the threshold
    table = headline_table(load_results(tmp_path))
    assert "| 64 x 1000 | 2 ms ±25% | noisy (" in table
    assert "2.00x" not in table


def test_speedups_and_copy_bandwidth_never_mix_runs(tmp_path: Path) -> None:
    first = ResultsFile(tmp_path, PROVENANCE)
    for impl, milliseconds in (("torch", 2.0), ("triton", 0.5)):
        first.record(_case(impl, 8, 10), [("time_median", milliseconds), ("copy_bandwidth", 10.0)])
    first.write()
    second_date = "2026-02-02T00:00:00Z"
    second = ResultsFile(tmp_path, {**PROVENANCE, "run_date": second_date})
    second.record(_case("torch", 8, 10), [("time_median", 1.0), ("copy_bandwidth", 20.0)])
    second.write()
    frame = load_results(tmp_path)
    wide = case_table(frame).set_index("impl")
    # triton's torch eager (2 ms) was replaced by another run's: no speedup across runs.
    assert math.isnan(wide.at["triton", "torch_ms"])
    assert wide.at["torch", "speedup"] == 1.0
    summary = summary_markdown(frame)
    assert "triton 4.00x" not in summary and "triton 2.00x" not in summary
    assert f"per run: {PROVENANCE['run_date']} 10.0 GB/s, {second_date} 20.0 GB/s" in summary
    assert "15.0 GB/s" not in summary


def test_summary_lists_a_disagreeing_case(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path, PROVENANCE)
    metrics = [("loss_rel_error", 0.5), ("grad_rel_error", 0.5), ("tolerance", 1e-5)]
    results.record(_case("triton", 8, 10), [*metrics, ("agreement", 0)])
    results.write()
    summary = summary_markdown(load_results(tmp_path))
    assert "**FAIL** (1 of 1)" in summary and "cross_entropy triton fp32 8 x 10" in summary


# --- The linear cross-entropy's report --------------------------------------------------------


def _linear_case(impl: str, batch: int, classes: int, hidden: int = 32) -> dict[str, object]:
    return {
        "loss": "linear_cross_entropy",
        "impl": impl,
        "dtype": "bf16",
        "batch": batch,
        "classes": classes,
        "hidden": hidden,
        "pass": "forward_backward",
    }


def test_linear_memory_plot_and_summary_with_published_figures(tmp_path: Path) -> None:
    # torch keeps N x V logits (grows with both), triton a few bytes a row; a sweep of V at
    # N = 256 and of N at V = 1024, as the quick preset has.
    results = ResultsFile(tmp_path, PROVENANCE)
    shapes = {(64, 1024), (256, 1024), (1024, 1024), (256, 256), (256, 4096)}
    for batch, classes in shapes:
        for impl, workspace in (("torch", 12 * batch * classes), ("triton", 20 * batch)):
            gradients = (batch + classes) * 32 * 2
            metrics = [
                ("peak_memory", gradients + workspace),
                ("peak_beyond_gradients", workspace),
                ("agreement", 1),
                ("loss_rel_error", 1e-3),
                ("grad_rel_error", 2e-3),
                ("weight_grad_rel_error", 3e-3),
                ("tolerance", 1e-2),
            ]
            if impl == "torch":
                metrics += [("time_median", 1.0), ("tflops", 0.5), ("matmul_fraction", 0.25)]
            results.record(_linear_case(impl, batch, classes), metrics)
    results.write()
    written = {path.name for path in report.regenerate(tmp_path)}
    assert written == {"linear_memory_bf16.png", "SUMMARY.md"}
    summary = (tmp_path / "SUMMARY.md").read_text()
    assert "## Linear cross-entropy" in summary
    assert "| bf16 | forward_backward | 256 x 32 x 4096 | torch | 1 | 0.5 | 25% |" in summary
    # The published A100 figures, marked as such, and the GPU shapes said to be unmeasured.
    assert "1164 MB (published, A100)" in summary and "28000 MB (published, A100)" in summary
    assert "Unmeasured" in summary and "8192 x 2304 x 256000" in summary
    # The worst gradient error of the linear loss counts the classifier's gradient too.
    assert "| linear_cross_entropy | torch | PASS | 5 | 0.001 | 0.003 |" in summary
    frame = load_results(tmp_path)
    assert headline_table(frame) == ""  # the linear loss has its own tables
    terminal = linear_headline_table(frame)  # the largest shape only
    assert "256 x 32 x 4096" in terminal and "1024 x 32 x 1024" not in terminal
    assert "| bf16 | 256 x 32 x 4096 | triton | - | - |" in terminal
