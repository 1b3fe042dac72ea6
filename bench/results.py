"""The results files under results/<device>/: columns, atomic writes, reading them back.

Every CSV the harness writes (``benchmarks.csv`` here, ``convergence.csv`` by
lossbench.bench.convergence) is long-format, one row per measured value, each row with its
provenance, and is written through a temporary file and ``os.replace``: readers see the old file
or the new one, never a part. ``ResultsFile`` holds the benchmarks: a run replaces the rows of
the cases it measured and keeps every other row. results/README.md documents every column.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from lossbench.bench.provenance import PROVENANCE_COLUMNS

BENCHMARKS_CSV = "benchmarks.csv"

CASE_COLUMNS = ["loss", "impl", "dtype", "batch", "classes", "hidden", "pass"]
COLUMNS = [*PROVENANCE_COLUMNS, *CASE_COLUMNS, "metric", "value", "unit", "note"]
# Before the linear loss, the CSV had no ``hidden`` column: such a file is still read, its rows
# taking hidden 0 (what the losses of logits record), and is rewritten with the column.
COLUMNS_BEFORE_HIDDEN = [column for column in COLUMNS if column != "hidden"]

# Every metric a case can record, with its unit (results/README.md says what each one counts).
UNITS: dict[str, str] = {
    "time_median": "ms",
    "time_p20": "ms",
    "time_p80": "ms",
    "time_iqr": "ms",
    "rounds": "count",
    "do_bench_median": "ms",
    "do_bench_p20": "ms",
    "do_bench_p80": "ms",
    "bytes": "B",
    "throughput": "GB/s",
    "copy_fraction": "fraction",
    "throughput_do_bench": "GB/s",
    "copy_fraction_do_bench": "fraction",
    "copy_bandwidth": "GB/s",
    "flops": "flop",
    "tflops": "TFLOP/s",
    "matmul_fraction": "fraction",
    "tflops_do_bench": "TFLOP/s",
    "matmul_fraction_do_bench": "fraction",
    "matmul_tflops": "TFLOP/s",
    "peak_memory": "B",
    "peak_beyond_gradients": "B",
    "loss_rel_error": "relative",
    "grad_rel_error": "relative",
    "grad_elementwise_error": "x allowance",
    "weight_grad_rel_error": "relative",
    "tolerance": "relative",
    "agreement": "1=pass",
    "agreement_batch": "rows",
    "gradient_rows": "rows",
    "skipped": "",
    "error": "",
}


# A case whose timed calls spread by more than this, (p80 - p20) / median, is flagged noisy: its
# time is reported with the flag, and no headline speedup is drawn from it. On a GPU with
# do_bench the spread is a few percent; on a shared CPU a contended case spread 39 % (IQR over
# the median, 3 rounds) and still showed a 93x "speedup", which is what this guards against.
NOISY_SPREAD = 0.2


class ResultsFolderError(Exception):
    """A results folder cannot be written (or read): the message names it and says why."""


# --- Writing ----------------------------------------------------------------------------------


def check_writable(folder: Path) -> None:
    """Raise ``ResultsFolderError`` unless files can be created in ``folder`` (made if missing).

    Called before any work, so that a read-only or foreign folder fails at once with one clear
    line instead of after a run, when its results would be lost.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ResultsFolderError(f"cannot write results to {folder}: {reason}") from None


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


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> None:
    """Write ``rows`` (dicts with exactly the keys ``columns``) as a CSV, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, buffer.getvalue())


# --- Reading ----------------------------------------------------------------------------------


def _missing_columns(
    path: Path, found: Sequence[str], columns: Sequence[str], older: Mapping[tuple, Mapping] | None
) -> Mapping[str, object]:
    """The columns (with the value to fill in) that a CSV with columns ``found`` lacks: none for
    ``columns``, those of an ``older`` layout it matches; else ``ResultsFolderError``, since the
    file was written by something else, and rewriting it would lose what it holds."""
    if list(found) == list(columns):
        return {}
    if older and tuple(found) in older:
        return older[tuple(found)]
    raise ResultsFolderError(
        f"{path} has columns {list(found)}, expected {list(columns)}: move it away "
        "or choose another results folder"
    )


def read_csv_rows(
    path: Path, columns: Sequence[str], older: Mapping[tuple, Mapping[str, object]] | None = None
) -> list[dict[str, str]]:
    """The rows of a CSV written with ``columns``, as dicts of text with those keys.

    ``older`` maps the columns of an earlier layout to the values its rows take for the columns
    it lacks. Raises ``ResultsFolderError`` when the file has other columns.
    """
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        missing = {
            column: str(value)
            for column, value in _missing_columns(
                path, reader.fieldnames or [], columns, older
            ).items()
        }
        return [{column: {**missing, **row}[column] for column in columns} for row in reader]


def load_csv(
    path: Path,
    columns: Sequence[str],
    text_columns: Sequence[str] = (),
    older: Mapping[tuple, Mapping[str, object]] | None = None,
):
    """A CSV written with ``columns`` (or an ``older`` layout, as ``read_csv_rows``) as a pandas
    DataFrame with ``columns``.

    The provenance columns and ``text_columns`` are read as text (a commit such as
    '1234567e8901' is not a number), ``value`` as a float where there is one.
    """
    import pandas as pd

    text = [*PROVENANCE_COLUMNS, *text_columns, *(["note"] if "note" in columns else [])]
    frame = pd.read_csv(path, dtype=dict.fromkeys(text, str))
    missing = _missing_columns(path, list(frame.columns), columns, older)
    for column, value in missing.items():
        frame[column] = value
    frame = frame[list(columns)]
    if "value" in frame:
        frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    if "note" in frame:
        frame["note"] = frame["note"].fillna("")
    return frame


# --- The benchmarks CSV -----------------------------------------------------------------------

# Earlier layouts of benchmarks.csv, still read: their columns, and what their rows take for the
# columns they lack.
OLDER_LAYOUTS: dict[tuple, dict[str, object]] = {tuple(COLUMNS_BEFORE_HIDDEN): {"hidden": 0}}


def case_key(row: Mapping[str, object]) -> tuple[str, ...]:
    return tuple(str(row[column]) for column in CASE_COLUMNS)


# The metrics that say a case was timed.
TIME_METRICS = ("time_median", "do_bench_median")


def measured_less(new: Mapping[str, object], earlier: Mapping[str, object]) -> bool:
    """Whether a case's new metrics measured less than its earlier ones, so that replacing them
    would silently lose a fuller result: the new run only skipped a case that was measured, or
    did not time a case that was timed (--benchmark-disable, the interpreter).

    Never when the new run found something wrong: an error, or a disagreement (agreement 0),
    always replaces what was there.
    """
    if not earlier or "error" in new or new.get("agreement") in (0, "0"):
        return False
    skipped_only = set(new) <= {"skipped"}
    if skipped_only:
        return any(name != "skipped" for name in earlier)
    timed = any(name in new for name in TIME_METRICS)
    return not timed and any(name in earlier for name in TIME_METRICS)


class ResultsFile:
    """The benchmarks CSV of a results folder: earlier rows, replaced case by case as a run
    measures.

    ``record`` replaces the earlier rows of each case the run measured, unless the new run
    measured less (``measured_less``); ``write`` rewrites the whole file atomically. Rows of
    cases this run did not measure keep their own provenance.
    """

    def __init__(self, folder: Path, run_provenance: Mapping[str, str]) -> None:
        self.path = Path(folder) / BENCHMARKS_CSV
        self.provenance = dict(run_provenance)
        self.rows_by_case: dict[tuple[str, ...], list[dict[str, object]]] = {}
        # Cases whose earlier, fuller measurements this run kept (``record``).
        self.kept: set[tuple[str, ...]] = set()
        if self.path.exists():
            for row in read_csv_rows(self.path, COLUMNS, OLDER_LAYOUTS):
                self.rows_by_case.setdefault(case_key(row), []).append(row)

    def record(self, case: Mapping[str, object], metrics: Iterable[tuple]) -> None:
        """Replace the rows of ``case`` (the CASE_COLUMNS) by ``metrics``, unless they measured
        less than the earlier rows (``measured_less``): then the earlier rows stay, and the case
        counts in ``kept``.

        Each metric is ``(name, value)`` or ``(name, value, note)``; units come from ``UNITS``.
        """
        metrics = list(metrics)
        key = case_key(case)
        earlier = {row["metric"]: row["value"] for row in self.rows_by_case.get(key, [])}
        if measured_less({name: value for name, value, *_ in metrics}, earlier):
            self.kept.add(key)
            return
        self.kept.discard(key)
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
        self.rows_by_case[key] = rows

    def write(self) -> None:
        rows = [row for case_rows in self.rows_by_case.values() for row in case_rows]
        write_csv(self.path, COLUMNS, rows)


def load_results(folder: Path):
    """The benchmarks CSV of ``folder`` as a pandas DataFrame (``load_csv``)."""
    return load_csv(Path(folder) / BENCHMARKS_CSV, COLUMNS, ["note", "unit"], OLDER_LAYOUTS)


def case_table(frame):
    """One row per case, one column per metric, with the headline speed columns added.

    ``time_ms``, ``time_p20_ms``, ``time_p80_ms``, ``gbps`` and ``of_copy`` (``tflops_rate`` and
    ``of_matmul`` for the linear loss): do_bench's figures where the case has them (GPU), else
    pytest-benchmark's. ``spread``: (p80 - p20) / median;
    ``noisy``: spread above ``NOISY_SPREAD``. ``speedup``: torch eager's ``time_ms`` of the same
    run (``run_date``) at the same loss, dtype, shape and pass over this case's, NaN where that
    run did not time torch eager there; ``speedup_noisy`` when either time is noisy.
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
    wide["time_p20_ms"] = wide["do_bench_p20"].where(on_gpu, wide["time_p20"])
    wide["time_p80_ms"] = wide["do_bench_p80"].where(on_gpu, wide["time_p80"])
    wide["spread"] = (wide["time_p80_ms"] - wide["time_p20_ms"]) / wide["time_ms"]
    wide["noisy"] = wide["spread"] > NOISY_SPREAD
    wide["gbps"] = wide["throughput_do_bench"].where(on_gpu, wide["throughput"])
    wide["of_copy"] = wide["copy_fraction_do_bench"].where(on_gpu, wide["copy_fraction"])
    wide["tflops_rate"] = wide["tflops_do_bench"].where(on_gpu, wide["tflops"])
    wide["of_matmul"] = wide["matmul_fraction_do_bench"].where(on_gpu, wide["matmul_fraction"])
    shape = ["run_date", "loss", "dtype", "batch", "classes", "hidden", "pass"]
    eager = wide[wide["impl"] == "torch"].set_index(shape)[["time_ms", "noisy"]]
    eager.columns = ["torch_ms", "torch_noisy"]
    wide = wide.join(eager, on=shape)
    wide["speedup"] = wide["torch_ms"] / wide["time_ms"]
    # A speedup is as trustworthy as the noisier of its two times (torch_noisy is NaN where the
    # run did not time torch eager: then there is no speedup to doubt).
    wide["speedup_noisy"] = wide["noisy"] | wide["torch_noisy"].fillna(False).astype(bool)
    return wide
