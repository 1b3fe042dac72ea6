"""``lossbench static``: compile the fused kernels for sm_90 offline, print and write the table.

    lossbench static                                   # the default cases (full preset's peers)
    lossbench static --losses cross_entropy --dtypes bf16 --class-counts 1000,32768
    lossbench static --check-budgets                   # exit 1 when a case breaks its budget

Writes ``static.csv`` (one row per case, results/README.md documents every column) and
``static.png`` to --results-dir (default results/sm90-static/). Needs no GPU: Triton's own
compiler and disassembler do the work. Columns whose names start with ``est_`` are ESTIMATES of
a model whose assumptions are in lossbench.bench.static.hardware; nothing here was measured.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lossbench.bench.cases import DTYPES
from lossbench.bench.provenance import PROVENANCE_COLUMNS, REPOSITORY_ROOT
from lossbench.bench.selection import names_argument, sizes_argument
from lossbench.bench.static.cases import (
    DEFAULT_DTYPES,
    SIGMOID_TARGETS,
    STATIC_LOSSES,
    default_cases,
)

STATIC_CSV = "static.csv"
STATIC_PNG = "static.png"
DEFAULT_FOLDER = REPOSITORY_ROOT / "results" / "sm90-static"

# The printed table: (column, header).
_PRINTED = [
    ("loss", "loss"),
    ("dtype", "dtype"),
    ("target", "target"),
    ("batch", "N"),
    ("classes", "C"),
    ("num_warps", "warps"),
    ("tile", "tile"),
    ("registers", "regs"),
    ("spill_bytes", "spill"),
    ("programs_per_sm", "prog/SM"),
    ("logits_loads", "logits loads/thread"),
    ("grad_stores", "grad stores/thread"),
    ("logits_reads", "reads"),
    ("launches", "launches"),
    ("sass_per_element", "SASS/elem"),
    ("budget_sass_per_element", "budget"),
    ("est_copy_fraction", "est. copy frac."),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--losses",
        type=names_argument(STATIC_LOSSES, "loss"),
        default=STATIC_LOSSES,
        help="losses of logits (the linear loss is not analysed yet)",
    )
    parser.add_argument("--dtypes", type=names_argument(DTYPES, "dtype"), default=DEFAULT_DTYPES)
    parser.add_argument("--batch-sizes", type=sizes_argument("batch sizes"), default=None)
    parser.add_argument("--class-counts", type=sizes_argument("class counts"), default=None)
    parser.add_argument(
        "--targets",
        type=names_argument(SIGMOID_TARGETS, "sigmoid target kind"),
        default=SIGMOID_TARGETS,
        help="targets of the sigmoid losses: uint8 labels, and/or the logits' dtype",
    )
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument(
        "--check-budgets",
        action="store_true",
        help="exit 1 when a 'mean' case breaks the instruction, spill, occupancy, width or "
        "launch budget",
    )


def format_table(rows: list[dict[str, object]]) -> str:
    """The printed table: fixed-width columns, one line per case."""
    headers = [header for _, header in _PRINTED]
    cells = [[str(row[column]) for column, _ in _PRINTED] for row in rows]
    widths = [max(len(text) for text in column) for column in zip(headers, *cells, strict=True)]
    lines = ["  ".join(text.ljust(width) for text, width in zip(headers, widths, strict=True))]
    lines += [
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True))
        for line in cells
    ]
    return "\n".join(lines)


def run(arguments: argparse.Namespace) -> int:
    """Compile, analyse, print, write; 1 when a case failed to compile or broke its budget."""
    import torch

    from lossbench.bench.provenance import provenance
    from lossbench.bench.results import ResultsFolderError, check_writable, write_csv
    from lossbench.bench.static.analysis import COLUMNS, analyse, over_budget
    from lossbench.bench.static.offline import compile_cases
    from lossbench.bench.static.plot import plot_static

    cases = default_cases(
        arguments.losses,
        arguments.dtypes,
        arguments.batch_sizes,
        arguments.class_counts,
        arguments.targets,
    )
    try:
        check_writable(arguments.results_dir)
    except ResultsFolderError as error:
        print(f"lossbench static: {error}")
        return 1
    print(f"compiling {len(cases)} cases for sm_90 (offline, no GPU) ...", flush=True)
    records = compile_cases(cases)
    failed = [record for record in records if "error" in record]
    rows = [analyse(record) for record in records if "error" not in record]
    stamp = {**provenance(torch.device("cpu")), "device": "sm90-static"}
    print(format_table(rows))
    print(
        "reads: logits elements requested per logit. est. copy frac.: ESTIMATED fraction of the "
        "copy bandwidth, from the model in lossbench.bench.static.hardware (not measured)."
    )
    write_csv(
        arguments.results_dir / STATIC_CSV,
        [*PROVENANCE_COLUMNS, *COLUMNS],
        [{**stamp, **row} for row in rows],
    )
    plot_static(rows, arguments.results_dir / STATIC_PNG)
    print(f"wrote {arguments.results_dir / STATIC_CSV} and {STATIC_PNG}")
    for record in failed:
        print(f"FAILED to compile {record['case']}: {record['error']}")
    broken = [
        (row, problems)
        for row in rows
        if row["reduction"] == "mean" and (problems := over_budget(row))
    ]
    if arguments.check_budgets:
        for row, problems in broken:
            print(
                f"OVER BUDGET {row['loss']} {row['dtype']} {row['target']} "
                f"{row['batch']}x{row['classes']}: {'; '.join(problems)}"
            )
    return 1 if failed or (arguments.check_budgets and broken) else 0
