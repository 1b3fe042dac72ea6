"""lossbench distributed: its world sizes, collective counting, aggregates, and a run end to end.

The run uses torch's fake process group in this process (the one-GPU mode), which needs no
launch: the gloo launch itself is what results/cpu/distributed.csv was measured with, and the
losses' own collectives are tested over gloo in tests/test_vocab_parallel.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from lossbench.bench.cli import main
from lossbench.bench.distributed.collectives import CollectiveRecorder
from lossbench.bench.distributed.launch import LaunchError, choose_backend
from lossbench.bench.distributed.results import (
    COLUMNS,
    DISTRIBUTED_CSV,
    DISTRIBUTED_PNG,
    load_distributed,
    with_aggregates,
)
from lossbench.bench.distributed.worker import DistributedConfig


@pytest.fixture
def fake_group():
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=4)
    yield dist.group.WORLD
    dist.destroy_process_group()


def _config(world_size: int) -> DistributedConfig:
    return DistributedConfig(world_size, "gloo", ("cross_entropy",), ("triton",), "fp32", 8, 8, 2)


@pytest.mark.parametrize(("world_size", "sizes"), [(1, [1]), (4, [1, 2, 4]), (6, [1, 2, 4, 6])])
def test_world_sizes_are_powers_of_two_and_p(world_size: int, sizes: list[int]) -> None:
    assert _config(world_size).world_sizes() == sizes


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's choice")
def test_backend_on_a_cpu() -> None:
    assert choose_backend("auto", 4) == "gloo"
    with pytest.raises(LaunchError, match="needs 2 GPUs"):
        choose_backend("nccl", 2)


def test_recorder_counts_collectives_and_contributed_bytes(fake_group) -> None:
    buffer = torch.zeros(10)
    with CollectiveRecorder() as recorder:
        dist.all_reduce(buffer, op=dist.ReduceOp.MAX)
        dist.all_gather([torch.empty(3) for _ in range(4)], torch.zeros(3))
        buffer.add_(1)  # not a collective
    assert recorder.kinds == ["allreduce", "allgather"]
    assert (recorder.elements, recorder.bytes) == (13, 52)


def test_aggregates_slowest_rank_and_efficiency() -> None:
    def rows(scaling: str, world_size: int, times: list[float]) -> list[dict]:
        case = {
            "backend": "gloo", "loss": "cross_entropy", "impl": "triton", "dtype": "fp32",
            "scaling": scaling, "world_size": world_size, "batch": 8,
            "classes": 64 if scaling == "strong" else 16 * world_size,
            "classes_per_rank": 64 // world_size if scaling == "strong" else 16,
            "pass": "forward", "note": "",
        }  # fmt: skip
        return [
            {**case, "rank": rank, "metric": metric, "value": value}
            for rank, time in enumerate(times)
            for metric, value in (("time_median", time), ("time_iqr", time / 10))
        ]

    measured = [
        *rows("strong", 1, [8.0]),
        *rows("strong", 4, [2.5, 4.0, 3.0, 1.0]),
        *rows("weak", 1, [3.0]),
        *rows("weak", 4, [5.0, 6.0, 1.0, 1.0]),
    ]
    aggregates = {
        (row["scaling"], row["world_size"], row["metric"]): row["value"]
        for row in with_aggregates(measured)
        if row["rank"] == "all"
    }
    assert aggregates["strong", 4, "time_slowest"] == 4.0
    assert aggregates["strong", 4, "time_slowest_iqr"] == 0.4  # the slowest rank's
    assert aggregates["strong", 4, "efficiency"] == pytest.approx(8.0 / (4 * 4.0))
    assert aggregates["weak", 4, "efficiency"] == pytest.approx(3.0 / 6.0)
    assert aggregates["strong", 1, "efficiency"] == 1.0


def test_fake_group_run_end_to_end(tmp_path, capsys) -> None:
    # Small on purpose: 8 rows, C = 64 (32 per rank at p = 2), one pass; the triton kernels run
    # in the interpreter here (checked, not timed).
    status = main(
        [
            "distributed", "--world-size", "2", "--backend", "fake", "--batch", "8",
            "--classes", "64", "--classes-per-rank", "16", "--impls", "triton,reference,naive",
            "--passes", "forward_backward", "--timing-budget", "0.01",
            "--results-dir", str(tmp_path),
        ]
    )  # fmt: skip
    assert status == 0
    assert not dist.is_initialized()
    frame = load_distributed(tmp_path / DISTRIBUTED_CSV)
    assert list(frame.columns) == COLUMNS
    assert (tmp_path / DISTRIBUTED_PNG).stat().st_size > 0
    assert set(frame["world_size"]) == {1, 2} and set(frame["backend"]) == {"fake"}
    verdicts = frame[frame["metric"] == "agreement"]
    assert len(verdicts) == 3 * 2 * 2 and (verdicts["value"] == 1).all()  # impls x scalings x p
    timed = frame[frame["metric"] == "time_median"]
    assert set(timed["impl"]) == {"reference", "naive"}  # triton: the interpreter, not timed
    collectives = frame[(frame["metric"] == "collectives") & (frame["impl"] == "reference")]
    assert (collectives["value"] == 2).all()
    efficiency = frame[(frame["metric"] == "efficiency") & (frame["world_size"] == 1)]
    assert (efficiency["value"] == 1).all()
    assert "fake process group" in capsys.readouterr().out
