"""Vocabulary-parallel losses (kernels/vocab_parallel.py, reference/vocab_parallel.py) over gloo.

Each world size (2 and 4 ranks) is spawned once, by a module fixture, and runs every check of
tests/vocab_parallel_ranks.py inside its ranks: spawning costs seconds per rank on two cores, a
check milliseconds. Each test below then reports one check's outcome on every rank.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.multiprocessing

from . import vocab_parallel_ranks
from .helpers import REPOSITORY_ROOT

WORLD_SIZES = (2, 4)


@pytest.fixture(scope="module", params=WORLD_SIZES, ids=lambda world: f"{world}_ranks")
def outcomes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """{check: [traceback or None, by rank]} of one spawn of ``request.param`` ranks."""
    world = request.param
    folder = tmp_path_factory.mktemp(f"vocab_parallel_{world}")
    # One seed for every rank (they must draw the same inputs), from this session's seeded RNG.
    seed = int(torch.randint(0, 2**31, ()))
    with pytest.MonkeyPatch.context() as patch:
        # The ranks import this package's rank module by name: make the checkout importable.
        patch.syspath_prepend(str(REPOSITORY_ROOT))
        torch.multiprocessing.start_processes(
            vocab_parallel_ranks.run_rank,
            args=(world, str(folder / "rendezvous"), seed, str(folder)),
            nprocs=world,
            join=True,
            start_method="spawn",
        )
    by_rank = [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(world)]
    return {name: [ranks[name] for ranks in by_rank] for name in vocab_parallel_ranks.CHECKS}


@pytest.mark.parametrize("check", list(vocab_parallel_ranks.CHECKS))
def test_rank_check(outcomes: dict[str, list[str | None]], check: str) -> None:
    failures = [
        f"--- rank {rank} ---\n{trace}" for rank, trace in enumerate(outcomes[check]) if trace
    ]
    assert not failures, "\n".join(failures)
