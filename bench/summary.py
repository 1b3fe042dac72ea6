"""SUMMARY.md of a results folder, and the headline table the terminal shows at the end of a run.

Drawn from the benchmarks CSV alone (``case_table``): the headline speedups, the best
implementation per shape, the measured fractions of copy beside the static estimates (where
results/sm90-static/static.csv holds the case), the linear cross-entropy's table beside the
figures CCE published, the agreement verdicts, the cases that raised and those skipped.
"""

from __future__ import annotations

import math

from lossbench.bench.cases import LINEAR_LOSS
from lossbench.bench.results import NOISY_SPREAD, case_table
from lossbench.bench.static.beside import estimates_beside_measured


def _provenance_line(frame) -> str:
    parts = []
    for column in ["device_name", "torch", "triton", "python", "git_commit", "run_date"]:
        values = sorted({str(value) for value in frame[column].dropna()})
        parts.append(f"{column} {', '.join(values) or '?'}")
    return "; ".join(parts)


def _shape(row) -> str:
    """'N x C', or 'N x D x V' for the linear loss."""
    if row.get("hidden", 0):
        return f"{int(row['batch'])} x {int(row['hidden'])} x {int(row['classes'])}"
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
    timed = timed[timed["loss"] != LINEAR_LOSS]  # its own table (_linear_section)
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


def linear_headline_table(frame) -> str:
    """The linear cross-entropy's forward+backward at its largest measured shape per dtype:
    time, fraction of the matmul, peak memory beyond the inputs and beyond their gradients, per
    implementation. Empty string when the frame holds no such case."""
    wide = case_table(frame)
    linear = wide[
        (wide["loss"] == LINEAR_LOSS)
        & (wide["pass"] == "forward_backward")
        & wide["peak_memory"].notna()
    ]
    rows = []
    for dtype, group in linear.groupby("dtype"):
        work = group["batch"] * group["hidden"] * group["classes"]
        largest = group.loc[work.idxmax()]
        at_shape = group[
            (group["batch"] == largest["batch"])
            & (group["hidden"] == largest["hidden"])
            & (group["classes"] == largest["classes"])
        ]
        for _, row in at_shape.sort_values("impl").iterrows():
            timed = not math.isnan(row["time_ms"])
            of_matmul = "-"
            if timed:
                of_matmul = "noisy" if row["noisy"] else f"{row['of_matmul']:.0%}"
            rows.append(
                [
                    dtype,
                    _shape(row),
                    row["impl"],
                    f"{row['time_ms']:.4g} {_spread(row)}".strip() if timed else "-",
                    of_matmul,
                    _bytes(row["peak_memory"]),
                    _bytes(row["peak_beyond_gradients"]),
                ]
            )
    if not rows:
        return ""
    header = ["dtype", "N x D x V", "impl", "ms", "of matmul", "peak", "beyond gradients"]
    return markdown_table(header, rows)


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
    timed = wide[wide["time_ms"].notna() & (wide["loss"] != LINEAR_LOSS)]
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
    lines += estimates_beside_measured(wide)
    lines += _linear_section(wide)
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
        # The linear loss has two gradients, hidden states' and classifier's: the worse counts.
        worst_grad = group[["grad_rel_error", "weight_grad_rel_error"]].max().max()
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
            weight = ""
            if not math.isnan(row["weight_grad_rel_error"]):
                weight = f", classifier gradient {row['weight_grad_rel_error']:.3g}"
            lines.append(
                f"- {row['loss']} {row['impl']} {row['dtype']} {_shape(row)} {row['pass']}: "
                f"loss {row['loss_rel_error']:.3g}, gradient {row['grad_rel_error']:.3g}"
                f"{weight}, tolerance {row['tolerance']:g}; worst entry "
                f"{row['grad_elementwise_error']:.3g} x allowed"
            )
        lines.append("")
    return lines


# CCE's Table 1 (Wijmans et al., arXiv 2411.09009): loss and gradient of Gemma 2 (2B)'s
# classifier, 8192 tokens x hidden 2304 x vocabulary 256000, bf16, on an A100. Published figures,
# not measured here. CCE's memory (1164 MB) matches its bf16 gradients (classifier 1125 MiB +
# hidden states 36 MiB), so we read the published memory as beyond the inputs, gradients
# included: the ``peak_memory`` of this harness.
PUBLISHED_SHAPE = (8192, 2304, 256000)
PUBLISHED_A100 = {
    "cce": ("Cut Cross-Entropy", 1164, 145),
    "liger": ("Liger-Kernel", 1474, 304),
    "compile": ("torch.compile", 16000, 143),
    "torch": ("torch eager", 28000, 208),
}


def _bytes(value: float) -> str:
    """'396 B', '2.3 KiB', '7.25 MiB', '27.3 GiB'; '-' when not measured."""
    if math.isnan(value):
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} B"


def _linear_section(wide) -> list[str]:
    """The linear cross-entropy: per shape and implementation its time, TFLOP/s against the
    matmul measured in the same run, and peak memory; then CCE's published A100 figures beside
    this run's at their shape, and the full preset's shapes this CSV does not hold."""
    from lossbench.bench.cases import PEER_SHAPES

    linear = wide[wide["loss"] == LINEAR_LOSS]
    if linear.empty:
        return []
    lines = [
        "## Linear cross-entropy",
        "",
        "Tokens N x hidden D x vocabulary V; forward+backward unless said. TFLOP/s: model "
        "flops (2 N D V forward, 6 N D V forward+backward, for every implementation alike; one "
        "that recomputes the logits executes more: CCE 8 N D V, triton 16 in bf16, 12 in fp16, "
        "8 in fp32, to keep its gradients exact) over the time; "
        "'of matmul': its fraction of a square matmul in the same dtype measured in the same "
        "run. Memory: the peak beyond the inputs (gradients included), and beyond the inputs "
        "and their gradients (the workspace). Agreement: against the float64 reference "
        f"on the rows of `agreement_batch`. A time whose spread exceeds {NOISY_SPREAD:.0%} of "
        "its median is noisy: no rate is drawn from it.",
        "",
    ]
    rows = []
    order = ["dtype", "pass", "batch", "hidden", "classes", "impl"]
    for _, row in linear.sort_values(order).iterrows():
        timed = not math.isnan(row["time_ms"])
        rated = timed and not row["noisy"]
        checked = not math.isnan(row["agreement"])
        rows.append(
            [
                row["dtype"],
                row["pass"],
                f"{int(row['batch'])} x {int(row['hidden'])} x {int(row['classes'])}",
                row["impl"],
                f"{row['time_ms']:.4g} {_spread(row)}".strip() if timed else "-",
                f"{row['tflops_rate']:.3g}" if rated else ("noisy" if timed else "-"),
                f"{row['of_matmul']:.0%}" if rated else ("noisy" if timed else "-"),
                _bytes(row["peak_memory"]),
                _bytes(row["peak_beyond_gradients"]),
                ("PASS" if row["agreement"] == 1 else "**FAIL**") if checked else "-",
            ]
        )
    header = ["dtype", "pass", "N x D x V", "impl", "ms", "TFLOP/s", "of matmul"]
    header += ["peak", "beyond gradients", "agreement"]
    lines += [markdown_table(header, rows), ""]

    batch, hidden, classes = PUBLISHED_SHAPE
    at_shape = linear[
        (linear["batch"] == batch)
        & (linear["hidden"] == hidden)
        & (linear["classes"] == classes)
        & (linear["dtype"] == "bf16")
        & (linear["pass"] == "forward_backward")
    ].set_index("impl")
    lines += [
        f"### Published: CCE's Table 1, A100, {batch} x {hidden} x {classes}, bf16",
        "",
        "Figures published by Wijmans et al. (arXiv 2411.09009), measured on an A100, not "
        "here; their memory read as beyond the inputs, gradients included. Beside them, this "
        "run's figures at the same shape on its own device, where it measured them.",
        "",
    ]
    rows = []
    for impl, (name, memory, milliseconds) in PUBLISHED_A100.items():
        ours = at_shape.loc[impl] if impl in at_shape.index else None
        rows.append(
            [
                f"{name} (`{impl}`)",
                f"{memory} MB (published, A100)",
                f"{milliseconds} ms (published, A100)",
                "unmeasured" if ours is None else _bytes(ours["peak_memory"]),
                "unmeasured"
                if ours is None or math.isnan(ours["time_ms"])
                else f"{ours['time_ms']:.4g} ms",
            ]
        )
    header = ["implementation", "memory", "forward+backward", "here: peak", "here: time"]
    lines += [markdown_table(header, rows), ""]
    measured = {
        (int(row["batch"]), int(row["hidden"]), int(row["classes"]))
        for _, row in linear.iterrows()
        if not math.isnan(row["time_ms"])
    }
    unmeasured = [shape for shape in PEER_SHAPES["linear"] if shape not in measured]
    if unmeasured:
        listing = ", ".join(" x ".join(str(size) for size in shape) for shape in unmeasured)
        lines += [
            f"Unmeasured (not timed in this CSV): the full preset's peer shapes {listing}. They "
            "need a GPU: `pytest bench/ --benchmark-only --preset full --losses "
            "linear_cross_entropy` on one.",
            "",
        ]
    return lines


def _noted_section(frame, metric: str, title: str) -> list[str]:
    """Cases that recorded ``metric`` ('skipped', 'error'), grouped by implementation and note."""
    noted = frame[frame["metric"] == metric]
    if noted.empty:
        return []
    groups = noted.groupby(["impl", "note"])
    rows = [[impl, note, str(len(group))] for (impl, note), group in groups]
    return [f"## {title}", "", markdown_table(["impl", "reason", "cases"], rows), ""]
