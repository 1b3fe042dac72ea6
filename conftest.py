"""What tests/ and bench/ share: Triton's mode, fresh random inputs, the gpu marker.

Every run draws new inputs, reproducible from the seed printed in the header.
"""

from __future__ import annotations

import importlib
import os
import random
import sys
import zlib
from pathlib import Path

import pytest
import torch

import lossbench.kernels  # noqa: F401  (first: it turns on Triton's interpreter before anything imports triton)

# bench/ is the package lossbench.bench, and its pytest files are modules of it. pytest names a
# file after its folders: it would import bench/conftest.py as "bench.conftest", and
# bench/__init__.py a second time as "bench", beside lossbench.bench. Two steps keep every file
# imported once, under its installed name: bench/ is collected as a plain folder (not a Package,
# whose __init__.py pytest imports), and its pytest files are imported here as lossbench.bench.*
# and entered in sys.modules under the name pytest looks for, which --import-mode=importlib
# (pyproject.toml) then uses instead of importing the file again.
BENCH_FOLDER = Path(__file__).resolve().parent / "bench"
for _path in sorted(BENCH_FOLDER.glob("*.py")):
    if _path.name == "conftest.py" or _path.name.startswith("bench_"):
        sys.modules[f"bench.{_path.stem}"] = importlib.import_module(
            f"lossbench.bench.{_path.stem}"
        )


def pytest_collect_directory(path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if path == BENCH_FOLDER:
        return pytest.Dir.from_parent(parent, path=path)
    return None


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
