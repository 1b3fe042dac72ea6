"""SUMMARY.md of a results folder, and the headline table the terminal shows at the end of a run.

Drawn from the benchmarks CSV alone (``case_table``): the headline speedups, the best
implementation per shape, the agreement verdicts, the cases that raised and those skipped.
"""

from __future__ import annotations

import math

from lossbench.bench.results import NOISY_SPREAD, case_table


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


def _spread(row) -> str:
    """'±4%': half the p20-p80 range of a case's time over its median; '' when not measured."""
    if math.isnan(row["spread"]):
        return ""
    return f"±{row['spread'] / 2:.0%}"


def _speedup(row) -> str:
    """A speedup over torch eager for a table cell: never a number drawn from a noisy time."""
    if math.isnan(row["speedup"]):
        return "-"
    if row["speedup_noisy"]:
        return "noisy"
    return f"{row['speedup']:.2f}x"


def headline_table(frame) -> str:
    """Forward+backward speedups over torch eager (and fraction of copy bandwidth) per impl.

    Rows: the peer table's shapes where measured, else each loss and dtype's largest shape.
    A speedup where either time is noisy (``results.NOISY_SPREAD``) reads 'noisy', never a
    number. Empty string when nothing was timed.
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
            if "torch" in by_impl.index:
                eager = by_impl.loc["torch"]
                cells.append(f"{eager['time_ms']:.3g} ms {_spread(eager)}".strip())
            else:
                cells.append("-")
            for impl in impls:
                if impl not in by_impl.index:
                    cells.append("-")
                    continue
                row = by_impl.loc[impl]
                text = _speedup(row)
                if not math.isnan(row["of_copy"]):
                    text += f" ({row['of_copy']:.0%} of copy)"
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
        "is synchronised. ± is half the range from the 20th to the 80th percentile of the timed "
        f"calls, over the median; a case whose range exceeds {NOISY_SPREAD:.0%} of its median "
        "is noisy, and no speedup is drawn from it. Bandwidth: bytes moved (each input read "
        "once, each output written once) over that time; 'of copy' is its fraction of the "
        f"device-to-device copy bandwidth measured in the same run{_copy_bandwidths(wide)}.",
        "Speedup: torch eager's time over the implementation's, same run, same shape ('-' where "
        "that run did not time torch eager at that shape, 'noisy' where either time is).",
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
                f"{row['impl']} {_speedup(row)}"
                for _, row in group.sort_values("impl").iterrows()
                if row["impl"] != "torch" and not math.isnan(row["speedup"])
            )
            rows.append(
                [
                    key[0],
                    key[1],
                    key[2],
                    _shape(best),
                    f"**{best['impl']}**" + (" (noisy)" if best["noisy"] else ""),
                    f"{best['time_ms']:.4g} {_spread(best)}".strip(),
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
        worst_elementwise = group["grad_elementwise_error"].max()
        rows.append(
            [
                loss,
                impl,
                "PASS" if failed.empty else f"**FAIL** ({len(failed)} of {len(group)})",
                str(len(group)),
                f"{worst_loss:.2g}",
                "-" if math.isnan(worst_grad) else f"{worst_grad:.2g}",
                "-" if math.isnan(worst_elementwise) else f"{worst_elementwise:.2g}",
            ]
        )
    header = ["loss", "impl", "verdict", "cases", "worst loss error", "worst gradient error"]
    lines += [markdown_table([*header, "worst gradient entry (x allowed)"], rows), ""]
    lines += [
        "Errors are normwise, max|error| / max|expected|, within the dtype's tolerance; the "
        "gradient's worst entry is its error over what the dtype allows that entry "
        "(rtol x |expected| + atol x max|expected|, and two subnormal spacings; "
        "reference/tolerance.py), at most 1.",
        "",
    ]
    failures = checked[checked["agreement"] < 1]
    if not failures.empty:
        lines += ["Disagreeing cases (relative errors, tolerance; gradient's worst entry):", ""]
        for _, row in failures.iterrows():
            lines.append(
                f"- {row['loss']} {row['impl']} {row['dtype']} {_shape(row)} {row['pass']}: "
                f"loss {row['loss_rel_error']:.3g}, gradient {row['grad_rel_error']:.3g}, "
                f"tolerance {row['tolerance']:g}; worst entry "
                f"{row['grad_elementwise_error']:.3g} x allowed"
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
