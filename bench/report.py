"""The report of a results folder: every plot and SUMMARY.md, redrawn from its CSV alone.

``lossbench plot results/<device>`` runs ``regenerate`` without measuring anything; a benchmark
run calls it at its end.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lossbench.bench.plots import (
    plot_linear_memory,
    plot_peak_memory,
    plot_speedup_heatmaps,
    plot_throughput,
)
from lossbench.bench.results import (
    BENCHMARKS_CSV,
    ResultsFolderError,
    case_table,
    check_writable,
    load_results,
    write_atomically,
)
from lossbench.bench.summary import summary_markdown

SUMMARY_MD = "SUMMARY.md"
PLOTS_FOLDER = "plots"


def regenerate(folder: Path) -> list[Path]:
    """Redraw every plot and SUMMARY.md of a results folder from its CSV alone.

    Plots this redraw did not write (of groups the CSV no longer holds) are deleted, so that
    plots/ never contradicts the CSV.
    """
    import matplotlib

    matplotlib.use("Agg")
    folder = Path(folder)
    frame = load_results(folder)
    wide = case_table(frame)
    plots = folder / PLOTS_FOLDER
    written = [
        *plot_throughput(wide, frame, plots),
        *plot_speedup_heatmaps(wide, frame, plots),
        *plot_peak_memory(wide, frame, plots),
        *plot_linear_memory(wide, frame, plots),
    ]
    for stale in set(plots.glob("*.png")) - set(written):
        stale.unlink()
    summary = folder / SUMMARY_MD
    write_atomically(summary, summary_markdown(frame))
    return [*written, summary]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results_dir", type=Path, help="a results folder, e.g. results/h200")


def run(arguments: argparse.Namespace) -> int:
    """``lossbench plot DIR``: redraw, print every file written; 1 with the reason on failure."""
    folder = arguments.results_dir
    try:
        if not (folder / BENCHMARKS_CSV).exists():
            raise ResultsFolderError(
                f"{folder / BENCHMARKS_CSV} does not exist: run the benchmarks first"
            )
        check_writable(folder)
        print(f"writing the plots and {SUMMARY_MD} of {folder} ...", flush=True)
        written = regenerate(folder)
    except ResultsFolderError as error:
        print(f"lossbench plot: {error}")
        return 1
    for path in written:
        print(path)
    return 0
