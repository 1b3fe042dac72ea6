"""The plots of a results folder, drawn from its benchmarks CSV alone (``case_table``).

Per loss and dtype: throughput against class count (one row of panels per batch size, error bars
from the 20th to the 80th percentile of the timed calls), speedup heatmaps over torch eager, and
peak memory against class count (one panel per batch size). The linear cross-entropy, whose
shapes have a hidden size and whose headline is memory, has its own: peak memory beyond the
inputs and gradients against V and against N, per dtype.
``lossbench.bench.report.regenerate`` calls them all.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from pathlib import Path

from lossbench.bench.cases import LINEAR_LOSS
from lossbench.bench.results import write_atomically

PASSES = ("forward", "forward_backward")
# Linestyles of the copy-bandwidth lines, one per run where the CSV mixes runs.
_COPY_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1)))


def _title(frame, what: str, loss: str, dtype: str) -> str:
    names = ", ".join(sorted(set(frame["device_name"].dropna().astype(str))))
    return f"{what}\n{loss}, {dtype}, on {names}"


def _untimed_note(frame, wide, loss: str, dtype: str) -> str:
    """Which implementations have results for ``loss`` and ``dtype`` but no time, and why.

    On a CPU that is Triton's kernels (the interpreter's time is no kernel speed) and the peers
    that need a GPU: a plot without them says why they are absent.
    """
    rows = frame[(frame["loss"] == loss) & (frame["dtype"] == dtype)]
    timed = set(wide.loc[wide["time_ms"].notna(), "impl"])
    reasons = []
    for impl, group in rows.groupby("impl"):
        if impl in timed:
            continue
        notes = group.loc[group["metric"] == "skipped", "note"]
        reason = notes.iloc[0] if not notes.empty else "not timed in this run"
        reasons.append(f"{impl}: {reason}")
    if not reasons:
        return ""
    return "Not timed here: " + "; ".join(reasons)


def _footnote(figure, text: str) -> None:
    if text:
        figure.text(0.01, -0.01, text, ha="left", va="top", fontsize="small", wrap=True)


def plot_throughput(wide, frame, folder: Path) -> list[Path]:
    """Per loss and dtype: effective GB/s against class count per implementation (log-log), one
    row of panels per batch size and one column per pass, with the 20th-80th percentile range
    as error bars and the copy bandwidth measured in the same run as a horizontal line (one
    style per run where the CSV mixes runs)."""
    import matplotlib.pyplot as plt

    written = []
    timed = wide[wide["gbps"].notna()]
    copies = timed.groupby("run_date")["copy_bandwidth"].median().dropna()
    for (loss, dtype), group in timed.groupby(["loss", "dtype"]):
        batches = sorted(set(group["batch"]))
        passes = [p for p in PASSES if p in set(group["pass"])]
        figure, axes = plt.subplots(
            len(batches),
            len(passes),
            figsize=(6 * len(passes), 3.6 * len(batches) + 0.8),
            sharey=True,
            squeeze=False,
            layout="constrained",
        )
        for row, batch in enumerate(batches):
            for column, pass_ in enumerate(passes):
                axis = axes[row][column]
                cases = group[(group["batch"] == batch) & (group["pass"] == pass_)]
                for impl, line in cases.sort_values("classes").groupby("impl"):
                    # Throughput is bytes / time: the slow end of the time is the low end here.
                    low = line["bytes"] / line["time_p80_ms"] / 1e6
                    high = line["bytes"] / line["time_p20_ms"] / 1e6
                    errors = [
                        (line["gbps"] - low).clip(lower=0),
                        (high - line["gbps"]).clip(lower=0),
                    ]
                    has_spread = line["time_p20_ms"].notna().all()
                    axis.errorbar(
                        line["classes"],
                        line["gbps"],
                        yerr=errors if has_spread else None,
                        marker="o",
                        capsize=3,
                        label=impl,
                    )
                runs = copies[copies.index.isin(set(group["run_date"]))]
                for index, (run_date, copy) in enumerate(runs.items()):
                    run = f", run {run_date}" if len(runs) > 1 else ""
                    axis.axhline(
                        copy,
                        color="black",
                        linestyle=_COPY_STYLES[index % len(_COPY_STYLES)],
                        linewidth=1,
                        label=f"copy {copy:.0f} GB/s{run}",
                    )
                axis.set_xscale("log")
                axis.set_yscale("log")
                axis.set_xlabel("classes C (log scale)")
                axis.set_title(f"{pass_}, batch N = {batch}")
                axis.grid(True, which="both", alpha=0.3)
                axis.legend(fontsize="small")
            axes[row][0].set_ylabel("GB/s (log): bytes moved / time")
        figure.suptitle(
            _title(frame, "Throughput (error bars: 20th to 80th percentile)", loss, dtype)
        )
        _footnote(figure, _untimed_note(frame, wide, loss, dtype))
        written.append(_save(figure, folder / f"throughput_{loss}_{dtype}.png"))
    return written


def plot_speedup_heatmaps(wide, frame, folder: Path) -> list[Path]:
    """Per loss and dtype: speedup over torch eager as a batch x classes heatmap per
    implementation, one row of panels per pass; a noisy cell shows 'noisy', not a number."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    written = []
    # The linear loss's shapes have a third size (D) a batch x classes grid cannot show.
    compared = wide[wide["speedup"].notna() & (wide["impl"] != "torch")]
    compared = compared[compared["loss"] != LINEAR_LOSS]
    for (loss, dtype), group in compared.groupby(["loss", "dtype"]):
        impls = sorted(set(group["impl"]))
        passes = [p for p in PASSES if p in set(group["pass"])]
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
                trusted = cells["speedup"].where(~cells["speedup_noisy"])
                grid = cells.assign(trusted=trusted).pivot_table(
                    index="batch", columns="classes", values="trusted", dropna=False
                )
                noisy = cells.pivot_table(
                    index="batch", columns="classes", values="speedup_noisy", aggfunc="any"
                )
                image = axis.imshow(
                    grid.to_numpy(), cmap="RdYlGn", norm=norm, aspect="auto", origin="lower"
                )
                for (y, x), value in _cells(grid):
                    axis.text(x, y, f"{value:.2g}x", ha="center", va="center", fontsize=7)
                for (y, x), flag in _cells(noisy.reindex_like(grid)):
                    if flag:
                        axis.text(x, y, "noisy", ha="center", va="center", fontsize=7)
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
    values = grid.to_numpy(dtype=float)
    for y in range(values.shape[0]):
        for x in range(values.shape[1]):
            if not math.isnan(values[y, x]):
                yield (y, x), values[y, x]


# Peak memory is drawn linear below this many bytes, so that a fused kernel's zero shows, and
# logarithmic above it.
MEMORY_LINEAR_BELOW = 1e6


def _memory_ticks(largest: float) -> list[float]:
    """Labelled ticks of a peak-memory axis: 0, then 1, 2 and 5 of every decade from 1 MB up to
    ``largest`` (or a few in the linear part when everything is below 1 MB)."""
    if largest < MEMORY_LINEAR_BELOW:
        # The smallest step of 1, 2 or 5 times a power of ten that needs at most 5 ticks.
        decade = 10 ** math.floor(math.log10(max(largest, 1.0)))
        step = next(m * decade for m in (0.2, 0.5, 1, 2, 5, 10) if largest / (m * decade) <= 5)
        return [step * k for k in range(math.ceil(largest / step) + 1)]
    ticks = [0.0]
    decade = MEMORY_LINEAR_BELOW
    while decade <= largest * 10:
        ticks += [m * decade for m in (1, 2, 5) if m * decade <= largest * 2]
        decade *= 10
    return ticks


def plot_peak_memory(wide, frame, folder: Path) -> list[Path]:
    """Per loss and dtype: forward+backward peak memory beyond the inputs against class count,
    one panel per batch size."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, FixedLocator

    written = []
    measured = wide[wide["peak_memory"].notna() & (wide["pass"] == "forward_backward")]
    measured = measured[measured["loss"] != LINEAR_LOSS]  # plot_linear_memory's
    for (loss, dtype), group in measured.groupby(["loss", "dtype"]):
        batches = sorted(set(group["batch"]))
        figure, axes = plt.subplots(
            1,
            len(batches),
            figsize=(5.5 * len(batches), 4.5),
            squeeze=False,
            layout="constrained",
        )
        for axis, batch in zip(axes[0], batches, strict=True):
            at_batch = group[group["batch"] == batch].sort_values("classes")
            for impl, line in at_batch.groupby("impl"):
                axis.plot(line["classes"], line["peak_memory"], marker="o", label=impl)
            largest = float(at_batch["peak_memory"].max())
            axis.set_xscale("log")
            if largest >= MEMORY_LINEAR_BELOW:
                axis.set_yscale("symlog", linthresh=MEMORY_LINEAR_BELOW)
            ticks = _memory_ticks(largest)
            axis.yaxis.set_major_locator(FixedLocator(ticks))
            axis.yaxis.set_major_formatter(EngFormatter(unit="B"))
            axis.set_ylim(0, max(ticks[-1], largest * 1.1, 1.0))
            axis.set_xlabel("classes C (log scale)")
            axis.set_title(f"batch N = {batch}")
            axis.grid(True, which="both", alpha=0.3)
            axis.legend(fontsize="small")
        axes[0][0].set_ylabel("peak memory beyond inputs (bytes; log above 1 MB)")
        figure.suptitle(_title(frame, "Peak memory, forward+backward", loss, dtype))
        written.append(_save(figure, folder / f"peak_memory_{loss}_{dtype}.png"))
    return written


def _widest_sweep(group, along: str, fixed: list[str]):
    """The rows of ``group`` at the values of ``fixed`` with the most distinct ``along`` values
    (ties: the larger sizes), and those fixed values; None when no sweep has two points."""
    counts = group.groupby(fixed)[along].nunique()
    counts = counts[counts >= 2]
    if counts.empty:
        return None, None
    best = max(counts.index, key=lambda key: (counts[key], key))
    selected = group
    for column, value in zip(fixed, best, strict=True):
        selected = selected[selected[column] == value]
    return selected, dict(zip(fixed, best, strict=True))


def plot_linear_memory(wide, frame, folder: Path) -> list[Path]:
    """Per dtype: the linear loss's forward+backward peak memory beyond the inputs and their
    gradients, against the vocabulary V (at the N and D with the widest V sweep) and against the
    tokens N (at the D and V with the widest N sweep), log-log, a line per implementation, and
    the size of the N x V fp32 logits for scale."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    written = []
    measured = wide[
        (wide["loss"] == LINEAR_LOSS)
        & (wide["pass"] == "forward_backward")
        & wide["peak_beyond_gradients"].notna()
    ]
    for dtype, group in measured.groupby("dtype"):
        sweeps = [
            ("classes", ["batch", "hidden"], "vocabulary V (log scale)"),
            ("batch", ["hidden", "classes"], "tokens N (log scale)"),
        ]
        panels = [
            (*_widest_sweep(group, along, fixed), along, label) for along, fixed, label in sweeps
        ]
        panels = [panel for panel in panels if panel[0] is not None]
        if not panels:
            continue
        figure, axes = plt.subplots(
            1, len(panels), figsize=(6 * len(panels), 4.6), squeeze=False, layout="constrained"
        )
        for axis, (rows, fixed, along, label) in zip(axes[0], panels, strict=True):
            for impl, line in rows.sort_values(along).groupby("impl"):
                axis.plot(
                    line[along], line["peak_beyond_gradients"].clip(lower=1), marker="o", label=impl
                )
            sizes = rows.drop_duplicates(along).sort_values(along)
            axis.plot(
                sizes[along],
                sizes["batch"] * sizes["classes"] * 4,
                color="black",
                linestyle=":",
                label="N x V fp32 logits",
            )
            axis.set_xscale("log")
            axis.set_yscale("log")
            axis.yaxis.set_major_formatter(EngFormatter(unit="B"))
            # Ticks at the measured sizes, written out: decades alone label none of them.
            axis.set_xticks(list(sizes[along]), [str(int(size)) for size in sizes[along]])
            axis.minorticks_off()
            axis.set_xlabel(label)
            letters = {"batch": "N", "hidden": "D", "classes": "V"}
            axis.set_title(", ".join(f"{letters[name]} = {int(v)}" for name, v in fixed.items()))
            axis.grid(True, which="both", alpha=0.3)
            axis.legend(fontsize="small")
        axes[0][0].set_ylabel("peak beyond inputs and gradients (bytes, log)")
        what = "Linear cross-entropy: peak memory beyond inputs and gradients, forward+backward"
        figure.suptitle(_title(frame, what, LINEAR_LOSS, dtype))
        _footnote(figure, _untimed_note(frame, wide, LINEAR_LOSS, dtype))
        written.append(_save(figure, folder / f"linear_memory_{dtype}.png"))
    return written


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    write_atomically(path, buffer.getvalue())
    return path
