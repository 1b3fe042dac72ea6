"""Settings for the correctness tests (the shared fixtures live in the root conftest.py)."""

import torch

# The tests' tensors are small: one thread is faster than two fighting over a shared core.
torch.set_num_threads(1)
