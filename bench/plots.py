"""The plots of a results folder, drawn from its benchmarks CSV alone (``case_table``).

Per loss and dtype: throughput against class count, speedup heatmaps over torch eager, and peak
memory against class count; ``lossbench.bench.report.regenerate`` calls them all.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from pathlib import Path

from lossbench.bench.results import write_atomically


def _sweep_batch(group) -> int:
    """The batch size with the most class counts: the class sweep's batch."""
    return int(group.groupby("batch")["classes"].nunique().idxmax())


def _title(frame, what: str, loss: str, dtype: str) -> str:
    names = ", ".join(sorted(set(frame["device_name"].dropna().astype(str))))
    return f"{what}\n{loss}, {dtype}, on {names}"


def plot_throughput(wide, frame, folder: Path) -> list[Path]:
    """Per loss and dtype: effective GB/s against class count per implementation, log-x, with
    the copy bandwidth measured in the same run as a horizontal line (one per run where the CSV
    mixes runs); one panel per pass."""
    import matplotlib.pyplot as plt

    written = []
    timed = wide[wide["gbps"].notna()]
    for (loss, dtype), group in timed.groupby(["loss", "dtype"]):
        batch = _sweep_batch(group)
        passes = [p for p in ["forward", "forward_backward"] if p in set(group["pass"])]
        figure, axes = plt.subplots(
            1,
            len(passes),
            figsize=(6 * len(passes), 4.8),
            sharey=True,
            squeeze=False,
            layout="constrained",
        )
        axes = axes[0]
        for axis, pass_ in zip(axes, passes, strict=True):
            at_batch = group[(group["batch"] == batch) & (group["pass"] == pass_)]
            for impl, line in at_batch.sort_values("classes").groupby("impl"):
                axis.plot(line["classes"], line["gbps"], marker="o", label=impl)
            copies = group.groupby("run_date")["copy_bandwidth"].median().dropna()
            for run_date, copy in copies.items():
                run = f", run {run_date}" if len(copies) > 1 else ""
                axis.axhline(
                    copy, color="black", linestyle="--", label=f"copy {copy:.0f} GB/s{run}"
                )
            axis.set_xscale("log")
            axis.set_yscale("log")
            axis.set_xlabel("classes C (log scale)")
            axis.set_title(f"{pass_}, batch N = {batch}")
            axis.grid(True, which="both", alpha=0.3)
            axis.legend(fontsize="small")
        axes[0].set_ylabel("effective bandwidth (GB/s, log scale): bytes moved / time")
        figure.suptitle(_title(frame, "Throughput", loss, dtype))
        written.append(_save(figure, folder / f"throughput_{loss}_{dtype}.png"))
    return written


def plot_speedup_heatmaps(wide, frame, folder: Path) -> list[Path]:
    """Per loss and dtype: speedup over torch eager as a batch x classes heatmap per
    implementation, one row of panels per pass."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    written = []
    compared = wide[wide["speedup"].notna() & (wide["impl"] != "torch")]
    for (loss, dtype), group in compared.groupby(["loss", "dtype"]):
        impls = sorted(set(group["impl"]))
        passes = [p for p in ["forward", "forward_backward"] if p in set(group["pass"])]
        figure, axes = plt.subplots(
            len(passes),
            len(impls),
            figsize=(4.5 * len(impls) + 1, 3.8 * len(passes) + 0.8),
            squeeze=False,
            layout="constrained",
        )
        norm = LogNorm(vmin=0.1, vmax=10)
        image = None
        for row, pass_ in enumerate(passes):
            for column, impl in enumerate(impls):
                axis = axes[row][column]
                cells = group[(group["impl"] == impl) & (group["pass"] == pass_)]
                grid = cells.pivot_table(index="batch", columns="classes", values="speedup")
                image = axis.imshow(
                    grid.to_numpy(), cmap="RdYlGn", norm=norm, aspect="auto", origin="lower"
                )
                for (y, x), value in _cells(grid):
                    axis.text(x, y, f"{value:.2g}x", ha="center", va="center", fontsize=7)
                axis.set_xticks(range(len(grid.columns)), [str(c) for c in grid.columns])
                axis.set_yticks(range(len(grid.index)), [str(b) for b in grid.index])
                axis.tick_params(axis="x", labelrotation=45)
                axis.set_xlabel("classes C")
                axis.set_ylabel("batch N")
                axis.set_title(f"{impl}, {pass_}")
        figure.colorbar(image, ax=axes, label="speedup over torch eager (x, log scale)")
        what = "Speedup over torch eager (torch's time / the implementation's)"
        figure.suptitle(_title(frame, what, loss, dtype))
        written.append(_save(figure, folder / f"speedup_{loss}_{dtype}.png"))
    return written


def _cells(grid) -> Iterable[tuple[tuple[int, int], float]]:
    values = grid.to_numpy()
    for y in range(values.shape[0]):
        for x in range(values.shape[1]):
            if not math.isnan(values[y, x]):
                yield (y, x), values[y, x]


def plot_peak_memory(wide, frame, folder: Path) -> list[Path]:
    """Per loss and dtype: forward+backward peak memory beyond the inputs against class count."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    written = []
    measured = wide[wide["peak_memory"].notna() & (wide["pass"] == "forward_backward")]
    for (loss, dtype), group in measured.groupby(["loss", "dtype"]):
        batch = _sweep_batch(group)
        figure, axis = plt.subplots(figsize=(7, 4.5), layout="constrained")
        at_batch = group[group["batch"] == batch].sort_values("classes")
        for impl, line in at_batch.groupby("impl"):
            axis.plot(line["classes"], line["peak_memory"], marker="o", label=impl)
        axis.set_xscale("log")
        # Linear below 1 MB, so that a fused kernel's zero shows; logarithmic above.
        axis.set_yscale("symlog", linthresh=1e6)
        axis.yaxis.set_major_formatter(EngFormatter(unit="B"))
        axis.set_ylim(bottom=0)
        axis.set_xlabel("classes C (log scale)")
        axis.set_ylabel("peak memory beyond inputs (bytes, log scale above 1 MB)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize="small")
        what = f"Peak memory, forward+backward, batch N = {batch}"
        axis.set_title(_title(frame, what, loss, dtype))
        written.append(_save(figure, folder / f"peak_memory_{loss}_{dtype}.png"))
    return written


def _save(figure, path: Path) -> Path:

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    write_atomically(path, buffer.getvalue())
    return path
