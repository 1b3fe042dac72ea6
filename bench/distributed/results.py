"""results/<device>/distributed.csv and distributed.png: what ``lossbench distributed`` measured.

Long format, one row per rank and metric, each with the run's provenance
(``lossbench.bench.provenance``), written atomically by ``lossbench.bench.results.write_csv``;
rows with ``rank`` = 'all' aggregate the ranks of a case: the slowest rank's time, the largest
peak memory, and the scaling efficiency. A run measures every world size up to its P in one go,
so it replaces the whole file. results/README.md documents every column.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

from lossbench.bench.provenance import PROVENANCE_COLUMNS
from lossbench.bench.results import load_csv, write_atomically, write_csv

DISTRIBUTED_CSV = "distributed.csv"
DISTRIBUTED_PNG = "distributed.png"

CASE_COLUMNS = [
    "backend",
    "loss",
    "impl",
    "dtype",
    "scaling",
    "world_size",
    "rank",
    "batch",
    "classes",
    "classes_per_rank",
    "pass",
]
COLUMNS = [*PROVENANCE_COLUMNS, *CASE_COLUMNS, "metric", "value", "unit", "note"]

UNITS: dict[str, str] = {
    "time_median": "ms",
    "time_iqr": "ms",
    "rounds": "count",
    "peak_memory": "B",
    "collectives": "count",
    "collective_bytes": "B",
    "loss_rel_error": "relative",
    "grad_rel_error": "relative",
    "grad_elementwise_error": "x allowance",
    "tolerance": "relative",
    "agreement": "1=pass",
    "agreement_batch": "rows",
    "skipped": "",
    # Aggregates over the ranks of a case (rank 'all'):
    "time_slowest": "ms",
    "time_slowest_iqr": "ms",
    "peak_memory_max": "B",
    "efficiency": "fraction",
}

# A case, less the rank: what the aggregates and the scaling compare across.
_CASE = [column for column in CASE_COLUMNS if column != "rank"]
_SERIES = [
    column for column in _CASE if column not in ("world_size", "classes", "classes_per_rank")
]


def with_aggregates(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """``rows`` plus, per case, rank-'all' rows: ``time_slowest`` (the largest of the ranks'
    medians: a step ends when its slowest rank does), ``peak_memory_max``, and ``efficiency``:
    T1 / (p Tp) for strong scaling and T1 / Tp for weak scaling, Tp the slowest time at world size
    p and T1 the same implementation's at world size 1 of the same run."""
    by_case: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["metric"] in ("time_median", "time_iqr", "peak_memory") and row["value"] != "":
            by_case[tuple(row[c] for c in _CASE)][row["metric"]].append(float(row["value"]))
    aggregates = []
    slowest: dict[tuple, float] = {}
    for case, metrics in by_case.items():
        columns = {**dict(zip(_CASE, case, strict=True)), "rank": "all"}
        if metrics["time_median"]:
            medians = metrics["time_median"]  # in rank order, as time_iqr
            slowest_rank = medians.index(max(medians))
            slowest[case] = medians[slowest_rank]
            aggregates.append({**columns, "metric": "time_slowest", "value": slowest[case]})
            if len(metrics["time_iqr"]) == len(medians):
                spread = metrics["time_iqr"][slowest_rank]
                aggregates.append({**columns, "metric": "time_slowest_iqr", "value": spread})
        if metrics["peak_memory"]:
            peak = max(metrics["peak_memory"])
            aggregates.append({**columns, "metric": "peak_memory_max", "value": peak})
    one_rank = {
        tuple(dict(zip(_CASE, case, strict=True))[c] for c in _SERIES): time
        for case, time in slowest.items()
        if int(dict(zip(_CASE, case, strict=True))["world_size"]) == 1
    }
    for case, time in slowest.items():
        columns = dict(zip(_CASE, case, strict=True))
        base = one_rank.get(tuple(columns[c] for c in _SERIES))
        if base is None:
            continue
        world = int(columns["world_size"])
        efficiency = base / (world * time) if columns["scaling"] == "strong" else base / time
        aggregates.append({**columns, "rank": "all", "metric": "efficiency", "value": efficiency})
    return [*rows, *({"note": "", **row} for row in aggregates)]


def write_distributed(
    rows: Iterable[Mapping[str, object]], provenance: Mapping[str, str], path: Path
) -> None:
    """Write ``rows`` (case columns, metric, value, note) with their units and provenance."""
    complete = [
        {**provenance, **row, "unit": UNITS[str(row["metric"])]}
        for row in rows  # each row has exactly COLUMNS' keys once these are added
    ]
    write_csv(path, COLUMNS, complete)


def load_distributed(path: Path):
    """distributed.csv as a pandas DataFrame."""
    return load_csv(path, COLUMNS, ["note", "unit", "rank"])


def plot_scaling(csv_path: Path, png_path: Path) -> Path:
    """distributed.png: per loss and pass, the slowest rank's time against the world size for
    strong and for weak scaling, and the efficiency of both; one line per implementation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = load_distributed(csv_path)
    aggregates = frame[frame["rank"] == "all"]
    panels = sorted(set(zip(aggregates["loss"], aggregates["pass"], strict=True)))
    impls = sorted(set(aggregates["impl"]))
    colour = {impl: plt.get_cmap("tab10")(index) for index, impl in enumerate(impls)}
    world_sizes = sorted(set(aggregates["world_size"].astype(int)))
    figure, axes = plt.subplots(
        max(1, len(panels)), 3, figsize=(16, 4.6 * max(1, len(panels))), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    for row, (loss, pass_) in enumerate(panels):
        group = aggregates[(aggregates["loss"] == loss) & (aggregates["pass"] == pass_)]
        for column, scaling in enumerate(("strong", "weak")):
            axis = axes[row][column]
            times = group[(group["scaling"] == scaling) & (group["metric"] == "time_slowest")]
            spreads = group[group["metric"] == "time_slowest_iqr"].set_index(_CASE)["value"]
            for impl, line in times.sort_values("world_size").groupby("impl"):
                spread = spreads.reindex(pd.MultiIndex.from_frame(line[_CASE])).to_numpy()
                axis.errorbar(
                    line["world_size"], line["value"], yerr=spread / 2, marker="o", capsize=3,
                    label=impl, color=colour[impl],
                )  # fmt: skip
            axis.set_title(f"{loss}, {pass_}\n{scaling} scaling: {_shape_words(group, scaling)}")
            axis.set_ylabel("slowest rank's median time, bars: its IQR (ms, log scale)")
            axis.set_yscale("log")
        axis = axes[row][2]
        efficiency = group[group["metric"] == "efficiency"]
        for (impl, scaling), line in efficiency.sort_values("world_size").groupby(
            ["impl", "scaling"]
        ):
            style = "-" if scaling == "strong" else "--"
            label = f"{impl}, {scaling}"
            axis.plot(
                line["world_size"], line["value"], style, marker="o", label=label,
                color=colour[impl],
            )  # fmt: skip
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.set_title(f"{loss}, {pass_}\nefficiency: strong T1 / (p Tp), weak T1 / Tp")
        axis.set_ylabel("efficiency (1 = perfect scaling)")
        for axis in axes[row]:
            axis.set_xscale("log", base=2)
            axis.set_xticks(world_sizes, [str(size) for size in world_sizes])
            axis.set_xlabel("world size p (ranks, log scale)")
            axis.grid(True, which="both", alpha=0.3)
            axis.legend(fontsize="small")
    names = ", ".join(sorted(set(frame["device_name"].dropna().astype(str))))
    backends = ", ".join(sorted(set(frame["backend"].astype(str))))
    dtypes = ", ".join(sorted(set(frame["dtype"].astype(str))))
    figure.suptitle(
        f"Vocabulary-parallel losses over torch.distributed ({backends}, {dtypes}) on {names}"
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    write_atomically(png_path, buffer.getvalue())
    return png_path


def _shape_words(group, scaling: str) -> str:
    rows = group[group["scaling"] == scaling]
    if rows.empty:
        return ""
    batch = int(rows["batch"].iloc[0])
    if scaling == "strong":
        return f"N = {batch}, C = {int(rows['classes'].iloc[0])} split p ways"
    return f"N = {batch}, C / p = {int(rows['classes_per_rank'].iloc[0])}"


def summary_table(rows: list[dict[str, object]]) -> str:
    """A plain-text table: per case, the slowest time, efficiency, largest peak memory,
    collectives and bytes per rank, and the agreement verdict (or why it was skipped)."""
    cases: dict[tuple, dict[str, object]] = defaultdict(dict)
    for row in rows:
        entry = cases[tuple(row[c] for c in _CASE)]
        metric, value = row["metric"], row["value"]
        if row["rank"] == "all":
            entry[metric] = value
        elif metric == "agreement":  # the verdict the group agreed on: the same on every rank
            entry[metric] = int(value)
        elif metric == "skipped":
            entry[metric] = row["note"]
        elif metric in ("collectives", "collective_bytes") and row["rank"] == 0:
            entry[metric] = value
    header = (
        f"{'loss':<18} {'scaling':<6} {'p':>2} {'pass':<16} {'impl':<13} {'slowest ms':>10} "
        f"{'effic.':>6} {'peak MiB':>8} {'coll.':>5} {'coll. KiB':>9}  agreement"
    )
    lines = [header, "-" * len(header)]
    for case, entry in sorted(cases.items(), key=lambda item: _order(item[0])):
        columns = dict(zip(_CASE, case, strict=True))

        def number(name: str, scale: float = 1.0, digits: int = 3, entry=entry) -> str:
            value = entry.get(name)
            if value in (None, ""):
                return "-"
            return f"{float(value) / scale:.{digits}g}"

        verdict = {1: "pass", 0: "FAIL"}.get(entry.get("agreement"), "")
        if "skipped" in entry:
            verdict = f"{verdict} (skipped: {entry['skipped']})".strip()
        lines.append(
            f"{columns['loss']:<18} {columns['scaling']:<6} {columns['world_size']:>2} "
            f"{columns['pass']:<16} {columns['impl']:<13} {number('time_slowest'):>10} "
            f"{number('efficiency', digits=2):>6} {number('peak_memory_max', 2**20):>8} "
            f"{number('collectives'):>5} {number('collective_bytes', 2**10):>9}  {verdict}"
        )
    return "\n".join(lines)


def _order(case: tuple) -> tuple:
    columns = dict(zip(_CASE, case, strict=True))
    return (
        columns["loss"], columns["scaling"], columns["pass"], int(columns["world_size"]),
        columns["impl"],
    )  # fmt: skip
