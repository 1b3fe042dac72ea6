"""Where and what ran: the bench device, its results folder, the versions and the git commit.

Every row the harness writes (benchmarks, convergence) carries ``provenance()``; the default
results folder of a device is ``results/<short name>`` in this checkout (``results_folder``).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

# The checkout: the parent of bench/ (lossbench installs in editable mode from it).
REPOSITORY_ROOT = Path(__file__).resolve().parent.parent

PROVENANCE_COLUMNS = [
    "run_date",
    "device",
    "device_name",
    "torch",
    "triton",
    "python",
    "git_commit",
]

# Vendor words dropped from a GPU's name to make the results folder's short name.
_VENDOR_WORDS = {"nvidia", "geforce", "tesla", "quadro", "amd", "instinct", "radeon"}


def bench_device() -> torch.device:
    """The device the harness measures on: the current CUDA GPU if there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (/proc/cpuinfo) and torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    threads = torch.get_num_threads()
    return f"{model} ({threads} thread{'s' if threads != 1 else ''})"


def device_slug(name: str | None) -> str:
    """A short folder name: 'NVIDIA H200' -> 'h200', 'NVIDIA GeForce RTX 4090' -> 'rtx4090'.

    The words up to and including the first one with a digit, vendor words dropped; 'cpu' for
    ``None`` (no GPU).
    """
    if name is None:
        return "cpu"
    words = [word for word in re.split(r"[\s\-_]+", name.lower()) if word not in _VENDOR_WORDS]
    kept = []
    for word in words:
        kept.append(word)
        if any(character.isdigit() for character in word):
            break
    return re.sub(r"[^a-z0-9]", "", "".join(kept)) or "gpu"


def device_folder(device: torch.device) -> str:
    """The results folder's name for ``device``: the GPU's short name, or 'cpu'."""
    return device_slug(torch.cuda.get_device_name(device) if device.type == "cuda" else None)


def results_folder(device: torch.device) -> Path:
    """The default results folder of ``device``: results/<device_folder> in this checkout."""
    return REPOSITORY_ROOT / "results" / device_folder(device)


def git_commit() -> str:
    """The checkout's commit (12 hex digits), '+dirty' when tracked code differs from it.

    Files under results/ do not count: the harness itself rewrites them, so every run after the
    first would otherwise call its own checkout dirty. LOSSBENCH_GIT_COMMIT, when set, is used
    instead: for a copy of the tree without .git (as on a machine the tree was copied to). ''
    when neither is known.
    """
    if os.environ.get("LOSSBENCH_GIT_COMMIT"):
        return os.environ["LOSSBENCH_GIT_COMMIT"]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args],
            cwd=REPOSITORY_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!results")
        return commit + ("+dirty" if changed else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def package_version(distribution: str) -> str:
    """The installed version of ``distribution`` from its metadata, '' when not installed.

    Read from metadata, not by importing: importing triton before lossbench.kernels has chosen
    the interpreter is what lossbench.kernels asks everyone to avoid.
    """
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


def provenance(device: torch.device) -> dict[str, str]:
    """The provenance columns (``PROVENANCE_COLUMNS``) of every row a run writes."""
    return {
        "run_date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": device_folder(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "python": platform.python_version(),
        "git_commit": git_commit(),
    }


def machine_load() -> tuple[float, int]:
    """The 1-minute load average and the number of CPUs: a loaded machine times noisily."""
    return os.getloadavg()[0], os.cpu_count() or 1
