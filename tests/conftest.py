"""Settings and fixtures of the correctness tests (the seeding lives in the root conftest.py)."""

from collections.abc import Iterator

import pytest
import torch

from .helpers import nan_poisoned_allocations

# The tests' tensors are small: one thread is faster than two fighting over a shared core.
torch.set_num_threads(1)


@pytest.fixture
def poisoned_allocations() -> Iterator[None]:
    """Every floating tensor from torch.empty / torch.empty_like starts as nan during the test:
    an output element a kernel forgets to write then shows as a mismatch."""
    with nan_poisoned_allocations():
        yield
