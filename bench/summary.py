"""SUMMARY.md of a results folder, and the headline table the terminal shows at the end of a run.

Drawn from the benchmarks CSV alone (``case_table``): the headline speedups, the best
implementation per shape, the agreement verdicts, the cases that raised and those skipped.
"""

from __future__ import annotations

import math

from lossbench.bench.results import case_table


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
    from lossbench.bench.cases import LOSSES, PEER_SHAPES

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
                of_copy = by_impl.at[impl, "of_copy"]
                text = "-" if math.isnan(speedup) else f"{speedup:.2f}x"
                if not math.isnan(of_copy):
                    text += f" ({of_copy:.0%} of copy)"
                cells.append(text)
            rows.append(cells)
    return markdown_table(["loss", "dtype", "N x C", "torch eager", *impls], rows)


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
                    f"{best['of_copy']:.0%}" if not math.isnan(best["of_copy"]) else "-",
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
