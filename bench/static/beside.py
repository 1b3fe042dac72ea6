"""The static table's ESTIMATES beside a benchmark run's measurements, for SUMMARY.md.

For every case both hold (the fused kernels, forward+backward, same loss, dtype and shape; the
sigmoid losses with targets in the logits' dtype, as the harness draws them), the fraction of
the copy bandwidth the run measured next to the one lossbench static estimates for an H200. Reads
results/sm90-static/static.csv with the csv module alone: drawing a summary starts no Triton.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from lossbench.bench.provenance import REPOSITORY_ROOT

STATIC_TABLE = REPOSITORY_ROOT / "results" / "sm90-static" / "static.csv"


def _estimates(path: Path) -> dict[tuple[str, str, int, int], dict[str, str]]:
    """The static table's rows by (loss, dtype, batch, classes), targets as the harness's."""
    if not path.exists():
        return {}
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    return {
        (row["loss"], row["dtype"], int(row["batch"]), int(row["classes"])): row
        for row in rows
        if row["reduction"] == "mean" and row["target"] in ("index", row["dtype"])
    }


def estimates_beside_measured(wide, path: Path = STATIC_TABLE) -> list[str]:
    """SUMMARY.md lines: a table of measured and estimated fractions of the copy bandwidth of the
    fused kernels, where the run timed a case the static table holds; [] where none."""
    from lossbench.bench.summary import markdown_table

    estimates = _estimates(path)
    timed = wide[
        (wide["impl"] == "triton") & (wide["pass"] == "forward_backward") & wide["of_copy"].notna()
    ]
    rows = []
    for _, case in timed.iterrows():
        key = (case["loss"], case["dtype"], int(case["batch"]), int(case["classes"]))
        estimate = estimates.get(key)
        if estimate is None or math.isnan(case["of_copy"]):
            continue
        rows.append(
            [
                key[0],
                key[1],
                f"{key[2]} x {key[3]}",
                f"{case['of_copy']:.0%}",
                f"{float(estimate['est_copy_fraction']):.0%}",
                estimate["sass_per_element"],
                estimate["launches"],
            ]
        )
    if not rows:
        return []
    header = ["loss", "dtype", "N x C", "measured of copy", "ESTIMATED of copy (H200)"]
    return [
        "## Measured beside the static estimate (fused kernels, forward+backward)",
        "",
        markdown_table([*header, "SASS instr/element", "launches"], rows),
        "",
        "The estimate is lossbench static's (results/sm90-static/static.csv): the fused kernels "
        "compiled for sm_90 and a model of an H200 SXM, an upper bound that leaves out launch "
        "latency and memory latency; it compares with a measurement on an H200 only. Where the "
        "two disagree there, the model's assumptions (lossbench.bench.static.hardware) need "
        "recalibrating.",
        "",
    ]
