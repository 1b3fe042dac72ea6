"""What tests/ and bench/ share: Triton's mode, fresh random inputs, the gpu marker.

Every run draws new inputs, reproducible from the seed printed in the header.
"""

from __future__ import annotations

import os
import random
import zlib

import pytest
import torch

import kernels  # noqa: F401  (first: it turns on Triton's interpreter before anything imports triton)

# One seed per session: a new one each run unless LOSSBENCH_SEED pins it to replay a failure.
SESSION_SEED = int(os.environ.get("LOSSBENCH_SEED", random.randrange(2**31)))


def pytest_report_header(config: pytest.Config) -> str:
    return f"lossbench seed: {SESSION_SEED} (replay with LOSSBENCH_SEED={SESSION_SEED})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (the interpreter is too slow for this size)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_each_test(request: pytest.FixtureRequest) -> None:
    """Seed torch per test from the session seed and the test's id: fresh inputs, replayable."""
    seed = SESSION_SEED ^ zlib.crc32(request.node.nodeid.encode())
    # Not torch.manual_seed: on a machine without a GPU it walks the lazy CUDA/XPU/MTIA seeding
    # queues and formats a stack trace for each, a measurable cost per test.
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
