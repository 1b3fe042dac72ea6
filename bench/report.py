"""What the harness writes under results/<device>/: the long-format CSV, plots and SUMMARY.md.

The CSV (``benchmarks.csv``, columns in ``COLUMNS``, documented in results/README.md) holds one
row per case and metric, each with its provenance. A run replaces the rows of the cases it
measured and keeps every other row, and every write goes to a temporary file first and then
replaces the CSV in one ``os.replace``: an interrupted run leaves a complete CSV behind. Plots
and the summary are drawn from the CSV alone (``regenerate``), so ``python -m bench plot`` redraws
them without running anything.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import importlib.metadata
import math
import os
import platform
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

CSV_NAME = "benchmarks.csv"
SUMMARY_NAME = "SUMMARY.md"
PLOTS_DIR = "plots"
REPOSITORY_ROOT = Path(__file__).resolve().parent.parent

PROVENANCE_COLUMNS = [
    "run_date",
    "device",
    "device_name",
    "torch",
    "triton",
    "python",
    "git_commit",
]
CASE_COLUMNS = ["loss", "impl", "dtype", "batch", "classes", "pass"]
COLUMNS = [*PROVENANCE_COLUMNS, *CASE_COLUMNS, "metric", "value", "unit", "note"]

# Every metric a case can record, with its unit (results/README.md says what each one counts).
UNITS: dict[str, str] = {
    "time_median": "ms",
    "time_iqr": "ms",
    "rounds": "count",
    "do_bench_median": "ms",
    "bytes": "B",
    "throughput": "GB/s",
    "roofline_fraction": "fraction",
    "throughput_do_bench": "GB/s",
    "roofline_fraction_do_bench": "fraction",
    "copy_bandwidth": "GB/s",
    "peak_memory": "B",
    "loss_rel_error": "relative",
    "grad_rel_error": "relative",
    "tolerance": "relative",
    "agreement": "1=pass",
    "agreement_batch": "rows",
    "gradient_rows": "rows",
    "skipped": "",
    "error": "",
}

# Vendor words dropped from a GPU's name to make the results folder's short name.
_VENDOR_WORDS = {"nvidia", "geforce", "tesla", "quadro", "amd", "instinct", "radeon"}


# --- Where and what ran -----------------------------------------------------------------------


def bench_device() -> torch.device:
    """The device the harness measures on: the current CUDA GPU if there is one, else the CPU."""
    return (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else (torch.device("cpu"))
    )


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (/proc/cpuinfo) and torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} ({torch.get_num_threads()} threads)"


def device_slug(name: str | None) -> str:
    """A short folder name: 'NVIDIA H200' -> 'h200', 'NVIDIA GeForce RTX 4090' -> 'rtx4090'.

    The words up to and including the first one with a digit, vendor words dropped; 'cpu' for
    ``None`` (no GPU).
    """
    if name is None:
        return "cpu"
    words = [word for word in re.split(r"[\s\-_]+", name.lower()) if word not in _VENDOR_WORDS]
    kept = []
    for word in words:
        kept.append(word)
        if any(character.isdigit() for character in word):
            break
    return re.sub(r"[^a-z0-9]", "", "".join(kept)) or "gpu"


def device_folder(device: torch.device) -> str:
    """The results folder's name for ``device``: the GPU's short name, or 'cpu'."""
    return device_slug(torch.cuda.get_device_name(device) if device.type == "cuda" else None)


def git_commit() -> str:
    """The checkout's commit (12 hex digits), '+dirty' when tracked files differ from it.

    LOSSBENCH_GIT_COMMIT, when set, is used instead: for a copy of the tree without .git (as on
    a device machine). '' when neither is known.
    """
    if os.environ.get("LOSSBENCH_GIT_COMMIT"):
        return os.environ["LOSSBENCH_GIT_COMMIT"]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args],
            cwd=REPOSITORY_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


def provenance(device: torch.device) -> dict[str, str]:
    """The provenance columns of every row this run writes.

    Triton's version comes from its package metadata: importing triton here, before kernels/
    has chosen the interpreter, is what kernels/__init__.py asks everyone to avoid.
    """
    return {
        "run_date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": device_folder(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "python": platform.python_version(),
        "git_commit": git_commit(),
    }


# --- Atomic writing ---------------------------------------------------------------------------


def write_atomically(path: Path, text: str | bytes) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and os.replace.

    Readers see the old file or the new one, never a part: an interrupted write leaves the
    old file as it was and removes the temporary one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(text, bytes) else "w"
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode) as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private; results are for everyone to read
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def rows_to_csv(rows: Iterable[Mapping[str, object]]) -> str:
    """The CSV text of ``rows`` (dicts with exactly the ``COLUMNS`` keys)."""
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def case_key(row: Mapping[str, object]) -> tuple[str, ...]:
    return tuple(str(row[column]) for column in CASE_COLUMNS)


class ResultsFile:
    """The CSV of a results folder: earlier rows, replaced case by case as this run measures.

    ``record`` replaces every earlier row of the case it measured; ``write`` rewrites the whole
    file atomically. Rows of cases this run did not measure (or only skipped) keep their own
    provenance.
    """

    def __init__(self, folder: Path, run_provenance: Mapping[str, str]) -> None:
        self.path = Path(folder) / CSV_NAME
        self.provenance = dict(run_provenance)
        self.rows_by_case: dict[tuple[str, ...], list[dict[str, object]]] = {}
        if self.path.exists():
            with open(self.path, newline="") as file:
                reader = csv.DictReader(file)
                if reader.fieldnames != COLUMNS:
                    raise ValueError(
                        f"{self.path} has columns {reader.fieldnames}, expected {COLUMNS}: "
                        "move it away or pass another --results-dir"
                    )
                for row in reader:
                    self.rows_by_case.setdefault(case_key(row), []).append(row)

    def record(self, case: Mapping[str, object], metrics: Iterable[tuple]) -> None:
        """Replace the rows of ``case`` (the CASE_COLUMNS) by ``metrics``.

        Each metric is ``(name, value)`` or ``(name, value, note)``; units come from ``UNITS``.
        A case this run only skipped (no metric but ``skipped``) measured nothing: its earlier
        measurements, if any, are kept and the skip is not recorded.
        """
        metrics = list(metrics)
        earlier = self.rows_by_case.get(case_key(case), [])
        skipped_only = all(name == "skipped" for name, *_ in metrics)
        if skipped_only and any(row["metric"] != "skipped" for row in earlier):
            return
        rows = []
        for name, value, *note in metrics:
            rows.append(
                {
                    **self.provenance,
                    **{column: case[column] for column in CASE_COLUMNS},
                    "metric": name,
                    "value": "" if value is None else value,
                    "unit": UNITS[name],
                    "note": note[0] if note else "",
                }
            )
        self.rows_by_case[case_key(case)] = rows

    def write(self) -> None:
        rows = [row for case_rows in self.rows_by_case.values() for row in case_rows]
        write_atomically(self.path, rows_to_csv(rows))


# --- Reading the CSV back ---------------------------------------------------------------------


def load_results(folder: Path):
    """The CSV of ``folder`` as a pandas DataFrame (value as float, batch and classes as int,
    the provenance columns as text: a commit such as '1234567e8901' is not a number)."""
    import pandas as pd

    text_columns = [*PROVENANCE_COLUMNS, "note", "unit"]
    frame = pd.read_csv(Path(folder) / CSV_NAME, dtype=dict.fromkeys(text_columns, str))
    missing = set(COLUMNS) - set(frame.columns)
    if missing:
        raise ValueError(f"{folder / CSV_NAME} lacks columns {sorted(missing)}")
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    frame["note"] = frame["note"].fillna("")
    return frame


def case_table(frame):
    """One row per case, one column per metric, with the headline speed columns added.

    ``time_ms``, ``gbps`` and ``roofline``: do_bench's figures where the case has them (GPU),
    else pytest-benchmark's. ``speedup``: torch eager's ``time_ms`` of the same run (``run_date``)
    at the same loss, dtype, shape and pass over this case's; NaN where that run did not time
    torch eager there.
    """
    index = ["run_date", *CASE_COLUMNS]
    wide = frame.pivot_table(index=index, columns="metric", values="value", aggfunc="last")
    wide = wide.reset_index()
    wide.columns.name = None
    for metric in UNITS:
        if metric not in wide:
            wide[metric] = math.nan
    on_gpu = wide["do_bench_median"].notna()
    wide["time_ms"] = wide["do_bench_median"].where(on_gpu, wide["time_median"])
    wide["gbps"] = wide["throughput_do_bench"].where(on_gpu, wide["throughput"])
    wide["roofline"] = wide["roofline_fraction_do_bench"].where(on_gpu, wide["roofline_fraction"])
    shape = ["run_date", "loss", "dtype", "batch", "classes", "pass"]
    eager = wide[wide["impl"] == "torch"].set_index(shape)["time_ms"].rename("torch_ms")
    wide = wide.join(eager, on=shape)
    wide["speedup"] = wide["torch_ms"] / wide["time_ms"]
    return wide


def _provenance_line(frame) -> str:
    parts = []
    for column in ["device_name", "torch", "triton", "python", "git_commit", "run_date"]:
        values = sorted({str(value) for value in frame[column].dropna()})
        parts.append(f"{column} {', '.join(values) or '?'}")
    return "; ".join(parts)


def _shape(row) -> str:
    return f"{int(row['batch'])} x {int(row['classes'])}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def headline_table(frame) -> str:
    """Forward+backward speedups over torch eager (and fraction of copy bandwidth) per impl.

    Rows: the peer table's shapes where measured, else each loss and dtype's largest shape.
    Empty string when nothing was timed.
    """
    from bench.cases import LOSSES, PEER_SHAPES

    wide = case_table(frame)
    timed = wide[(wide["pass"] == "forward_backward") & wide["time_ms"].notna()]
    if timed.empty:
        return ""
    impls = sorted(set(timed["impl"]) - {"torch"})
    rows = []
    for (loss, dtype), group in timed.groupby(["loss", "dtype"]):
        peers = PEER_SHAPES[LOSSES[loss].family] if loss in LOSSES else ()
        shapes = [s for s in peers if ((group["batch"] == s[0]) & (group["classes"] == s[1])).any()]
        if not shapes:
            largest = group.loc[(group["batch"] * group["classes"]).idxmax()]
            shapes = [(largest["batch"], largest["classes"])]
        for batch, classes in shapes:
            at_shape = group[(group["batch"] == batch) & (group["classes"] == classes)]
            by_impl = at_shape.set_index("impl")
            cells = [loss, dtype, f"{int(batch)} x {int(classes)}"]
            eager = by_impl["time_ms"].get("torch", math.nan)
            cells.append("-" if math.isnan(eager) else f"{eager:.3g} ms")
            for impl in impls:
                if impl not in by_impl.index or math.isnan(by_impl.at[impl, "time_ms"]):
                    cells.append("-")
                    continue
                speedup = by_impl.at[impl, "speedup"]
                roofline = by_impl.at[impl, "roofline"]
                text = "-" if math.isnan(speedup) else f"{speedup:.2f}x"
                if not math.isnan(roofline):
                    text += f" ({roofline:.0%} of copy)"
                cells.append(text)
            rows.append(cells)
    return markdown_table(["loss", "dtype", "N x C", "torch eager", *impls], rows)


# --- Plots ------------------------------------------------------------------------------------


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
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    write_atomically(path, buffer.getvalue())
    return path


# --- SUMMARY.md -------------------------------------------------------------------------------


def summary_markdown(frame) -> str:
    """SUMMARY.md: best implementation per shape, speedups over torch eager, agreement, skips."""
    wide = case_table(frame)
    names = ", ".join(sorted(set(frame["device_name"].dropna().astype(str))))
    lines = [
        f"# Benchmark summary: {names}",
        "",
        f"Provenance: {_provenance_line(frame)}.",
        "",
        "Time: triton.testing.do_bench median on a GPU, else pytest-benchmark median; the device "
        "is synchronised. Bandwidth: bytes moved (each input read once, each output written "
        "once) over that time; 'of copy' is its fraction of the device-to-device copy "
        f"bandwidth measured in the same run{_copy_bandwidths(wide)}.",
        "Speedup: torch eager's time over the implementation's, same run, same shape ('-' where "
        "that run did not time torch eager at that shape).",
        "",
    ]
    headline = headline_table(frame)
    if headline:
        lines += ["## Headline: forward+backward speedup over torch eager", "", headline, ""]
    lines += ["## Best implementation per shape", ""]
    timed = wide[wide["time_ms"].notna()]
    if timed.empty:
        lines += ["Nothing was timed in this run (--benchmark-disable, or every case skipped).", ""]
    else:
        rows = []
        order = ["loss", "dtype", "pass", "batch", "classes"]
        for key, group in timed.groupby(order):
            best = group.loc[group["time_ms"].idxmin()]
            others = ", ".join(
                f"{r['impl']} {r['speedup']:.2f}x"
                for _, r in group.sort_values("impl").iterrows()
                if r["impl"] != "torch" and not math.isnan(r["speedup"])
            )
            rows.append(
                [
                    key[0],
                    key[1],
                    key[2],
                    _shape(best),
                    f"**{best['impl']}**",
                    f"{best['time_ms']:.4g}",
                    f"{best['gbps']:.3g}",
                    f"{best['roofline']:.0%}" if not math.isnan(best["roofline"]) else "-",
                    others or "-",
                ]
            )
        header = ["loss", "dtype", "pass", "N x C", "best", "ms", "GB/s", "of copy"]
        lines += [markdown_table([*header, "speedup over torch eager"], rows), ""]
    lines += _agreement_section(wide)
    lines += _noted_section(frame, "error", "Cases that raised an exception")
    lines += _noted_section(frame, "skipped", "Skipped cases")
    return "\n".join(lines) + "\n"


def _copy_bandwidths(wide) -> str:
    """' (12.3 GB/s)' for one run, ' (per run: <run_date> 12.3 GB/s, ...)' for several."""
    per_run = wide.groupby("run_date")["copy_bandwidth"].median().dropna()
    if per_run.empty:
        return ""
    if len(per_run) == 1:
        return f" ({per_run.iloc[0]:.1f} GB/s)"
    runs = ", ".join(f"{run_date} {copy:.1f} GB/s" for run_date, copy in per_run.items())
    return f" (per run: {runs})"


def _agreement_section(wide) -> list[str]:
    checked = wide[wide["agreement"].notna()]
    lines = ["## Agreement with the float64 reference", ""]
    if checked.empty:
        return [*lines, "No case was checked.", ""]
    rows = []
    for (loss, impl), group in checked.groupby(["loss", "impl"]):
        failed = group[group["agreement"] < 1]
        worst_loss = group["loss_rel_error"].max()
        worst_grad = group["grad_rel_error"].max()
        rows.append(
            [
                loss,
                impl,
                "PASS" if failed.empty else f"**FAIL** ({len(failed)} of {len(group)})",
                str(len(group)),
                f"{worst_loss:.2g}",
                "-" if math.isnan(worst_grad) else f"{worst_grad:.2g}",
            ]
        )
    header = ["loss", "impl", "verdict", "cases", "worst loss error", "worst gradient error"]
    lines += [markdown_table(header, rows), ""]
    failures = checked[checked["agreement"] < 1]
    if not failures.empty:
        lines += ["Disagreeing cases (relative error, tolerance):", ""]
        for _, row in failures.iterrows():
            lines.append(
                f"- {row['loss']} {row['impl']} {row['dtype']} {_shape(row)} {row['pass']}: "
                f"loss {row['loss_rel_error']:.3g}, gradient {row['grad_rel_error']:.3g}, "
                f"tolerance {row['tolerance']:g}"
            )
        lines.append("")
    return lines


def _noted_section(frame, metric: str, title: str) -> list[str]:
    """Cases that recorded ``metric`` ('skipped', 'error'), grouped by implementation and note."""
    noted = frame[frame["metric"] == metric]
    if noted.empty:
        return []
    groups = noted.groupby(["impl", "note"])
    rows = [[impl, note, str(len(group))] for (impl, note), group in groups]
    return [f"## {title}", "", markdown_table(["impl", "reason", "cases"], rows), ""]


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
    plots = folder / PLOTS_DIR
    written = [
        *plot_throughput(wide, frame, plots),
        *plot_speedup_heatmaps(wide, frame, plots),
        *plot_peak_memory(wide, frame, plots),
    ]
    for stale in set(plots.glob("*.png")) - set(written):
        stale.unlink()
    summary = folder / SUMMARY_NAME
    write_atomically(summary, summary_markdown(frame))
    return [*written, summary]
