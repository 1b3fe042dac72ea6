"""Settings and fixtures of the correctness tests (the seeding lives in the root conftest.py)."""

import pytest
import torch

# The tests' tensors are small: one thread is faster than two fighting over a shared core.
torch.set_num_threads(1)


@pytest.fixture
def poisoned_allocations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every floating tensor from torch.empty / torch.empty_like starts as nan during the test:
    an output element a kernel forgets to write then shows as a mismatch."""
    empty, empty_like = torch.empty, torch.empty_like

    def poisoned(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.fill_(float("nan")) if tensor.is_floating_point() else tensor

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poisoned(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poisoned(empty_like(*a, **k)))
