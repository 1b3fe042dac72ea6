"""What one pytest session of benchmarks shares: device, selection, results file, deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lossbench.bench.cases import Case, Preset, generate_cases
from lossbench.bench.measure import copy_bandwidth, matmul_throughput
from lossbench.bench.provenance import provenance
from lossbench.bench.results import ResultsFile

# Rewrite the CSV at most this often while cases run (and always at the end of the session).
WRITE_INTERVAL_S = 5.0


@dataclass
class BenchSession:
    """What every case of one pytest session shares: device, selection, results, deadline."""

    device: torch.device
    preset: Preset
    losses: tuple[str, ...]
    impls: tuple[str, ...]
    dtypes: tuple[str, ...]
    batch_sizes: tuple[int, ...] | None
    class_counts: tuple[int, ...] | None
    results_dir: Path
    max_minutes: float | None
    # --hidden-sizes: the linear loss's D (None keeps the preset's).
    hidden_sizes: tuple[int, ...] | None = None
    # Prints one progress line where the user sees it (pytest's terminal, set by bench/conftest.py).
    announce: Callable[[str], None] = print
    started: float = field(default_factory=time.monotonic)
    total_cases: int = 0
    done_cases: int = 0
    _results: ResultsFile | None = None
    _copy_bandwidth_gbps: float | None = None
    _matmul_tflops: dict[torch.dtype, float] = field(default_factory=dict)
    _last_write: float = 0.0

    def cases(self) -> list[Case]:
        return generate_cases(
            self.preset,
            self.losses,
            self.impls,
            self.dtypes,
            self.batch_sizes,
            self.class_counts,
            self.hidden_sizes,
        )

    @property
    def results(self) -> ResultsFile:
        """The results CSV, read on first use (so collecting alone never touches it)."""
        if self._results is None:
            self._results = ResultsFile(self.results_dir, provenance(self.device))
        return self._results

    @property
    def copy_bandwidth_gbps(self) -> float:
        """Device-to-device copy bandwidth in GB/s, measured once per session on first use."""
        if self._copy_bandwidth_gbps is None:
            self._copy_bandwidth_gbps = copy_bandwidth(self.device) / 1e9
        return self._copy_bandwidth_gbps

    def matmul_tflops(self, dtype: torch.dtype) -> float:
        """TFLOP/s of a square matmul in ``dtype``, measured once per session and dtype on
        first use (``lossbench.bench.measure.matmul_throughput``)."""
        if dtype not in self._matmul_tflops:
            self._matmul_tflops[dtype] = matmul_throughput(self.device, dtype) / 1e12
        return self._matmul_tflops[dtype]

    def deadline_passed(self) -> bool:
        if self.max_minutes is None:
            return False
        return time.monotonic() - self.started > 60 * self.max_minutes

    def record(self, case: Case, metrics: list[tuple]) -> None:
        """Store the case's metrics; rewrite the CSV if the last write is a while ago."""
        self.done_cases += 1
        row = {**vars(case), "pass": case.pass_}
        self.results.record(row, metrics)
        if time.monotonic() - self._last_write > WRITE_INTERVAL_S:
            self.write()

    def write(self) -> None:
        self.results.write()
        self._last_write = time.monotonic()
