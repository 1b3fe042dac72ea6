"""Settings and fixtures of the correctness tests (the seeding lives in the root conftest.py)."""

from collections.abc import Iterator

import pytest
import torch
import torch._dynamo  # loaded now: see below

from .helpers import nan_poisoned_allocations

# torch._dynamo lists the torch functions it may trace when it first loads, which the first call
# of a custom op (every kernel launch) triggers. Loaded inside a test that patches torch.empty
# (poisoned_allocations), it would list the patch and refuse the real torch.empty afterwards:
# every later torch.compile test would break its graph there. Loaded here, it lists the real one.

# The tests' tensors are small: one thread is faster than two fighting over a shared core.
torch.set_num_threads(1)


@pytest.fixture
def poisoned_allocations() -> Iterator[None]:
    """Every floating tensor from torch.empty / torch.empty_like starts as nan during the test:
    an output element a kernel forgets to write then shows as a mismatch."""
    with nan_poisoned_allocations():
        yield
