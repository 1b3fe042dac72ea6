"""One rank's part of ``lossbench distributed``: every case at every world size, measured.

A launch of P ranks measures the world sizes 1, 2, 4, ... and P in one run, each on the group of
the first p ranks (``dist.new_group``), the others waiting at a barrier: every ratio (scaling,
efficiency) then compares times of one run on one machine. For each world size p, loss, scaling
(strong: C classes split p ways; weak: ``classes_per_rank`` classes per rank, C = p times that),
pass and implementation, every rank of the group:

1. draws the same full (N, C) logits and (N,) targets (one seed per shape) and keeps its slice;
2. runs the pass once and checks its loss and gradient slice against the single-device float64
   reference on the full logits (``lossbench.bench.agreement``); the group agrees on the verdict
   (an all-reduce): ours failing anywhere is not timed, a peer failing is timed and marked;
3. measures its peak memory beyond the inputs (``measure.peak_memory``), then counts the
   collectives one step issues and the bytes it contributes to them (``CollectiveRecorder``);
4. times rounds of the step, each round started together (a barrier outside the timed region)
   and ended by a device synchronisation, as many as fill the time budget on the slowest rank.

Under Triton's interpreter (no GPU) the triton implementation is checked on fewer rows and
never timed. With a fake process group (one GPU: ``launch``), collectives return at once and
leave their buffers as they were, so the times count each rank's compute alone, and agreement is
checked on the rank's slice as a world of one, where those collectives are exact.
"""

from __future__ import annotations

import datetime
import math
import os
import statistics
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lossbench.bench.agreement import INTERPRETER_ELEMENTS, Agreement, check_agreement
from lossbench.bench.cases import DTYPES, LOSSES, PASSES
from lossbench.bench.distributed.collectives import CollectiveRecorder
from lossbench.bench.distributed.implementations import (
    PEERS,
    RankImplementation,
    Shard,
    load_rank_implementation,
)
from lossbench.bench.implementations import UnavailableError
from lossbench.bench.measure import peak_memory, synchronize

SCALINGS = ("strong", "weak")
# How long a rank waits in a collective before it gives up: a rank that failed leaves the others
# waiting, and a fresh process group on a loaded 2-core machine can take a minute to form.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class DistributedConfig:
    """What one run measures (picklable: every launched rank gets a copy)."""

    world_size: int  # P, the ranks launched; world sizes 1, 2, 4, ... and P are measured
    backend: str  # gloo, nccl or fake
    losses: tuple[str, ...]
    impls: tuple[str, ...]
    dtype: str
    batch: int  # N rows
    classes: int  # C of strong scaling
    classes_per_rank: int  # V of weak scaling: C = p V
    passes: tuple[str, ...] = PASSES
    timing_budget_s: float = 0.2
    min_rounds: int = 10
    max_rounds: int = 100
    seed: int = 0

    def world_sizes(self) -> list[int]:
        """1, 2, 4, ... below P, and P."""
        sizes = [1 << k for k in range(self.world_size.bit_length()) if 1 << k < self.world_size]
        return [*sizes, self.world_size]


@dataclass(frozen=True)
class DistributedCase:
    """One measurement: ``impl`` of ``loss`` at world size p, strong or weak, one pass."""

    loss: str
    impl: str
    dtype: str
    scaling: str
    world_size: int
    batch: int
    classes: int
    pass_: str

    @property
    def classes_per_rank(self) -> int:
        return self.classes // self.world_size

    def columns(self, backend: str, rank: int) -> dict[str, object]:
        """The case columns of its CSV rows (lossbench.bench.distributed.results)."""
        return {
            "backend": backend,
            "loss": self.loss,
            "impl": self.impl,
            "dtype": self.dtype,
            "scaling": self.scaling,
            "world_size": self.world_size,
            "rank": rank,
            "batch": self.batch,
            "classes": self.classes,
            "classes_per_rank": self.classes_per_rank,
            "pass": self.pass_,
        }


# --- Entry points ----------------------------------------------------------------------------


def run_rank(config: DistributedConfig) -> list[dict[str, object]] | None:
    """One launched rank (torch's elastic launcher or torchrun set RANK, WORLD_SIZE, ...):
    measure every world size, then hand every rank's rows to rank 0, which returns them."""
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if config.backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(cpu_threads_per_rank(config))
    dist.init_process_group(config.backend, timeout=COLLECTIVE_TIMEOUT)
    try:
        rows: list[dict[str, object]] = []
        for world_size in config.world_sizes():
            group = dist.new_group(list(range(world_size)))
            if rank < world_size:
                rows += measure_world(config, world_size, group, rank, device)
            dist.barrier()
        gathered: list | None = [None] * dist.get_world_size() if rank == 0 else None
        dist.gather_object(rows, gathered, dst=0)
    finally:
        dist.destroy_process_group()
    if gathered is None:
        return None
    return [row for rank_rows in gathered for row in rank_rows]


def cpu_threads_per_rank(config: DistributedConfig) -> int:
    """torch's CPU threads for each rank: the machine's cores shared by the P ranks, at least 1.

    More threads than cores are worse than slow: torch's OpenMP threads wait for each other at
    every parallel region, and on a loaded 2-core machine a 16 x 256 cross-entropy measured 36 ms
    with 2 threads against 0.04 ms with 1 (measured here, 2026-12-02).
    """
    return max(1, (os.cpu_count() or 1) // config.world_size)


def run_fake(config: DistributedConfig, device: torch.device) -> list[dict[str, object]]:
    """One process measures rank 0 of each world size with torch's fake process group, with
    the CPU threads a launched rank would have (on a CPU, where this mode is for testing)."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads_per_rank(config))
    try:
        return _measure_with_fake_groups(config, device)
    finally:
        torch.set_num_threads(threads)


def _measure_with_fake_groups(
    config: DistributedConfig, device: torch.device
) -> list[dict[str, object]]:
    from torch.testing._internal.distributed.fake_pg import FakeStore

    rows: list[dict[str, object]] = []
    for world_size in config.world_sizes():
        # The gate: each slice problem as a world of one, where the fake collectives are exact.
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=1)
        try:
            gate = _slice_agreements(config, world_size, device)
        finally:
            dist.destroy_process_group()
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
        try:
            rows += measure_world(config, world_size, dist.group.WORLD, 0, device, gate)
        finally:
            dist.destroy_process_group()
    return rows


# --- One world size --------------------------------------------------------------------------


def cases_of_world(config: DistributedConfig, world_size: int) -> list[DistributedCase]:
    """Every case of one world size, the implementations of one shape and pass back to back."""
    cases = []
    for loss in config.losses:
        for scaling in SCALINGS:
            classes = config.classes_per_rank * world_size
            if scaling == "strong":
                classes = config.classes
            for pass_ in config.passes:
                for impl in config.impls:
                    case = (loss, impl, config.dtype, scaling, world_size, config.batch, classes)
                    cases.append(DistributedCase(*case, pass_))
    return cases


def measure_world(
    config: DistributedConfig,
    world_size: int,
    group: dist.ProcessGroup,
    rank: int,
    device: torch.device,
    gate: dict[tuple, Agreement] | None = None,
) -> list[dict[str, object]]:
    """This rank's rows for every case of one world size (``gate``: fake mode's agreements)."""
    rows = []
    for case in cases_of_world(config, world_size):
        columns = case.columns(config.backend, rank)
        for name, value, *note in measure_case(config, case, group, rank, device, gate):
            rows.append(
                {**columns, "metric": name, "value": value, "note": note[0] if note else ""}
            )
    return rows


def _shard(case: DistributedCase, group: dist.ProcessGroup, rank: int, device) -> Shard:
    size = case.classes_per_rank
    return Shard(group, rank * size, size, case.classes, device)


def _inputs(
    config: DistributedConfig,
    case: DistributedCase,
    rows: int,
    device: torch.device,
    target_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The full (rows, C) logits and (rows,) targets of a case's shape, the same on every rank
    and for every implementation (one seed per loss, scaling, world size and rows); targets in
    [0, ``target_classes``) when given, else in [0, C)."""
    key = f"{case.loss}-{case.scaling}-{case.world_size}-{rows}"
    generator = torch.Generator(device).manual_seed(config.seed ^ zlib.crc32(key.encode()))
    dtype = DTYPES[case.dtype]
    logits = torch.randn(rows, case.classes, generator=generator, device=device).to(dtype)
    target_classes = target_classes or case.classes
    target = torch.randint(0, target_classes, (rows,), generator=generator, device=device)
    return logits, target


def _run_once(
    implementation: RankImplementation, local: torch.Tensor, target: torch.Tensor, pass_: str
) -> torch.Tensor:
    """The pass once (loss, and backward into ``local.grad``); returns the loss on this rank."""
    with implementation.context():
        loss = implementation.function(local, target)
        if pass_ == "forward_backward":
            loss.backward()
    return implementation.local_value(loss).detach()


def _check(
    implementation: RankImplementation,
    config: DistributedConfig,
    case: DistributedCase,
    shard: Shard,
    rows: int,
    device: torch.device,
) -> Agreement:
    """Run the pass once on ``rows`` rows and compare with the float64 reference."""
    full, target = _inputs(config, case, rows, device)
    columns = slice(shard.offset, shard.offset + shard.size)
    # A copy even where the slice is all of ``full`` (p = 1): an implementation that writes over
    # its logits must not change the reference's.
    local = full[:, columns].clone(memory_format=torch.contiguous_format)
    local.requires_grad_(case.pass_ == "forward_backward")
    loss = _run_once(implementation, local, target, case.pass_)
    return check_agreement(
        LOSSES[case.loss], DTYPES[case.dtype], full, target, loss, local.grad, columns
    )


def _agreed(flag: bool, group: dist.ProcessGroup, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on every rank of ``group`` (an all-reduce MIN)."""
    where = device if dist.get_backend(group) == "nccl" else torch.device("cpu")
    verdict = torch.tensor([int(flag)], device=where)
    dist.all_reduce(verdict, op=dist.ReduceOp.MIN, group=group)
    return bool(verdict.item())


def _agreed_max(value: float, group: dist.ProcessGroup, device: torch.device) -> float:
    where = device if dist.get_backend(group) == "nccl" else torch.device("cpu")
    largest = torch.tensor([value], dtype=torch.float64, device=where)
    dist.all_reduce(largest, op=dist.ReduceOp.MAX, group=group)
    return float(largest.item())


def measure_case(
    config: DistributedConfig,
    case: DistributedCase,
    group: dist.ProcessGroup,
    rank: int,
    device: torch.device,
    gate: dict[tuple, Agreement] | None = None,
) -> list[tuple]:
    """This rank's metrics of one case: ``(name, value)`` or ``(name, value, note)``."""
    shard = _shard(case, group, rank, device)
    try:
        implementation = load_rank_implementation(case.loss, case.impl, shard)
    except UnavailableError as error:
        return [("skipped", "", str(error))]
    rows = case.batch
    if implementation.interpreted:
        rows = max(1, min(case.batch, INTERPRETER_ELEMENTS // case.classes_per_rank))
    metrics: list[tuple] = []
    if gate is None:
        agreement = _check(implementation, config, case, shard, rows, device)
        note = ""
    elif _gate_key(case) in gate:
        agreement = gate[_gate_key(case)]
        note = "checked on this rank's slice as a world of one (fake group)"
    else:
        return [("skipped", "", "not available as a world of one, so its agreement is unknown")]
    passed = _agreed(agreement.passed, group, device)
    metrics += [
        ("loss_rel_error", agreement.loss_error, note),
        ("grad_rel_error", "" if agreement.grad_error is None else agreement.grad_error, note),
        (
            "grad_elementwise_error",
            "" if agreement.grad_elementwise_error is None else agreement.grad_elementwise_error,
            note,
        ),
        ("tolerance", agreement.tolerance),
        ("agreement", int(passed)),
        ("agreement_batch", rows),
    ]
    if not passed and case.impl not in PEERS:
        return metrics
    if implementation.interpreted:
        return [
            *metrics,
            ("skipped", "", "Triton's interpreter (no GPU): agreement checked, not timed"),
        ]

    # A fake group's SUM returns this rank's own share, so its C is this rank's V: targets stay
    # in rank 0's slice there, or the loss would reject them (or, on a GPU, give nan rows).
    target_classes = case.classes_per_rank if gate is not None else None
    local_full, target = _inputs(config, case, case.batch, device, target_classes)
    columns = slice(shard.offset, shard.offset + shard.size)
    local = local_full[:, columns].contiguous()
    del local_full
    local.requires_grad_(case.pass_ == "forward_backward")
    saved = local.detach().clone() if implementation.overwrites_logits else None

    def setup() -> None:
        """Before each step, outside the timed region: a fresh gradient, as zero_grad() leaves
        it, and the logits restored for an implementation that overwrites them."""
        local.grad = None
        if saved is not None:
            with torch.no_grad():
                local.copy_(saved)

    def step() -> None:
        _run_once(implementation, local, target, case.pass_)
        synchronize(device)

    setup()
    step()  # warm-up: compilation, caches
    setup()
    metrics.append(("peak_memory", peak_memory(step, device)))
    setup()
    with CollectiveRecorder() as recorder:
        step()
    metrics += [
        ("collectives", recorder.count, recorder.describe()),
        ("collective_bytes", recorder.bytes),
    ]
    times = _time_rounds(config, setup, step, group, device)
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    metrics += [
        ("time_median", statistics.median(times) * 1e3),
        ("time_iqr", (quartiles[2] - quartiles[0]) * 1e3),
        ("rounds", len(times)),
    ]
    return metrics


def _time_rounds(
    config: DistributedConfig,
    setup: Callable[[], None],
    step: Callable[[], None],
    group: dist.ProcessGroup,
    device: torch.device,
) -> list[float]:
    """Seconds of each round of ``step``; every rank of ``group`` runs the same rounds, each
    after ``setup`` and started together (a barrier, then a device synchronisation), all three
    outside the timed region."""
    first = _round(setup, step, group, device)
    slowest = _agreed_max(first, group, device)
    wanted = math.ceil(config.timing_budget_s / max(slowest, 1e-9))
    rounds = max(config.min_rounds, min(config.max_rounds, wanted))
    return [_round(setup, step, group, device) for _ in range(rounds)]


def _round(
    setup: Callable[[], None],
    step: Callable[[], None],
    group: dist.ProcessGroup,
    device: torch.device,
) -> float:
    setup()
    dist.barrier(group=group)
    synchronize(device)
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


# --- The fake group's gate ------------------------------------------------------------------


def _gate_key(case: DistributedCase) -> tuple:
    return (case.loss, case.impl, case.scaling, case.pass_)


def _slice_agreements(
    config: DistributedConfig, world_size: int, device: torch.device
) -> dict[tuple, Agreement]:
    """Each case's agreement on rank 0's slice problem (N, C / p), run as a world of one."""
    agreements = {}
    for case in cases_of_world(config, world_size):
        slice_case = DistributedCase(
            case.loss, case.impl, case.dtype, case.scaling, 1, case.batch,
            case.classes_per_rank, case.pass_,
        )  # fmt: skip
        shard = _shard(slice_case, dist.group.WORLD, 0, device)
        try:
            implementation = load_rank_implementation(case.loss, case.impl, shard)
        except UnavailableError:
            continue
        rows = case.batch
        if implementation.interpreted:
            rows = max(1, min(case.batch, INTERPRETER_ELEMENTS // case.classes_per_rank))
        agreements[_gate_key(case)] = _check(
            implementation, config, slice_case, shard, rows, device
        )
    return agreements
