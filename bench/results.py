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
    "copy_fraction": "fraction",
    "throughput_do_bench": "GB/s",
    "copy_fraction_do_bench": "fraction",
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


def read_csv_rows(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a CSV written with ``columns``, as dicts of text.

    Raises ``ResultsFolderError`` when the file has other columns: it was written by something
    else, and rewriting it would lose what it holds.
    """
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        if reader.fieldnames != list(columns):
            raise ResultsFolderError(
                f"{path} has columns {reader.fieldnames}, expected {list(columns)}: move it away "
                "or choose another results folder"
            )
        return list(reader)


def load_csv(path: Path, columns: Sequence[str], text_columns: Sequence[str] = ()):
    """A CSV written with ``columns`` as a pandas DataFrame.

    The provenance columns and ``text_columns`` are read as text (a commit such as
    '1234567e8901' is not a number), ``value`` as a float where there is one.
    """
    import pandas as pd

    frame = pd.read_csv(path, dtype=dict.fromkeys([*PROVENANCE_COLUMNS, *text_columns], str))
    if list(frame.columns) != list(columns):
        raise ResultsFolderError(f"{path} has columns {list(frame.columns)}, expected {columns}")
    if "value" in frame:
        frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    if "note" in frame:
        frame["note"] = frame["note"].fillna("")
    return frame


# --- The benchmarks CSV -----------------------------------------------------------------------


def case_key(row: Mapping[str, object]) -> tuple[str, ...]:
    return tuple(str(row[column]) for column in CASE_COLUMNS)


class ResultsFile:
    """The benchmarks CSV of a results folder: earlier rows, replaced case by case as a run
    measures.

    ``record`` replaces every earlier row of the case it measured; ``write`` rewrites the whole
    file atomically. Rows of cases this run did not measure (or only skipped) keep their own
    provenance.
    """

    def __init__(self, folder: Path, run_provenance: Mapping[str, str]) -> None:
        self.path = Path(folder) / BENCHMARKS_CSV
        self.provenance = dict(run_provenance)
        self.rows_by_case: dict[tuple[str, ...], list[dict[str, object]]] = {}
        if self.path.exists():
            for row in read_csv_rows(self.path, COLUMNS):
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
        write_csv(self.path, COLUMNS, rows)


def load_results(folder: Path):
    """The benchmarks CSV of ``folder`` as a pandas DataFrame (``load_csv``)."""
    return load_csv(Path(folder) / BENCHMARKS_CSV, COLUMNS, ["note", "unit"])


def case_table(frame):
    """One row per case, one column per metric, with the headline speed columns added.

    ``time_ms``, ``gbps`` and ``copy_fraction_of_time``: do_bench's figures where the case has
    them (GPU), else pytest-benchmark's. ``speedup``: torch eager's ``time_ms`` of the same run
    (``run_date``) at the same loss, dtype, shape and pass over this case's; NaN where that run
    did not time torch eager there.
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
    wide["of_copy"] = wide["copy_fraction_do_bench"].where(on_gpu, wide["copy_fraction"])
    shape = ["run_date", "loss", "dtype", "batch", "classes", "pass"]
    eager = wide[wide["impl"] == "torch"].set_index(shape)["time_ms"].rename("torch_ms")
    wide = wide.join(eager, on=shape)
    wide["speedup"] = wide["torch_ms"] / wide["time_ms"]
    return wide
