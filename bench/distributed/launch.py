"""Starting the ranks of ``lossbench distributed``: torch's launcher, torchrun, or a fake group.

- Under torchrun (``torchrun --nproc-per-node P -m lossbench.bench distributed ...``), this
  process is one rank already: it runs ``worker.run_rank`` with torchrun's environment.
- Otherwise ``launch`` starts P ranks itself with torch's elastic launcher (the machinery behind
  torchrun, ``torch.distributed.launcher.api.elastic_launch``), standalone on this machine.
- With one GPU (or ``--backend fake``) there is nothing to launch: one process times rank 0 of
  each world size with torch's fake process group (``worker.run_fake``), and says so.

Backends: NCCL with at least P GPUs (P >= 2), the fake group with one GPU, gloo on the CPU.
"""

from __future__ import annotations

import os
import uuid

import torch

from lossbench.bench.distributed.worker import DistributedConfig, run_fake, run_rank

BACKENDS = ("auto", "gloo", "nccl", "fake")


class LaunchError(Exception):
    """The ranks cannot be started as asked; the message says why."""


def under_torchrun() -> bool:
    """True in a process that torchrun (or another torch elastic agent) started as a rank."""
    return "TORCHELASTIC_RUN_ID" in os.environ or all(
        name in os.environ for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    )


def choose_backend(requested: str, world_size: int) -> str:
    """The backend for ``world_size`` ranks: ``requested``, or with 'auto' NCCL when there are
    that many GPUs (and more than one rank), the fake group with fewer GPUs, else gloo."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested == "auto":
        if gpus >= max(2, world_size) or (gpus >= 1 and world_size == 1):
            return "nccl"
        return "fake" if gpus >= 1 else "gloo"
    if requested == "nccl" and gpus < world_size:
        raise LaunchError(f"--backend nccl needs {world_size} GPUs, found {gpus}")
    return requested


def backend_note(backend: str, world_size: int) -> str:
    """What the backend means for the figures, printed with them."""
    if backend == "fake":
        return (
            "fake process group: one process times rank 0's compute on its (N, C/p) slice; its "
            "collectives return at once, so no time counts communication"
        )
    cores = os.cpu_count() or 1
    if backend == "gloo" and world_size > cores:
        return (
            f"gloo on the CPU: {world_size} ranks share {cores} cores, so the largest world sizes "
            "measure an oversubscribed machine"
        )
    return f"{backend}: {world_size} ranks, one process each"


def launch(config: DistributedConfig) -> list[dict[str, object]] | None:
    """Run every rank of ``config``; the rows of all ranks here, None on ranks other than 0."""
    if config.backend == "fake":
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        return run_fake(config, device)
    if under_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        if world != config.world_size:
            raise LaunchError(
                f"torchrun started {world} ranks but --world-size is {config.world_size}"
            )
        return run_rank(config)
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    launch_config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=config.world_size,
        run_id=f"lossbench-{uuid.uuid4().hex[:8]}",
        # Standalone, as torchrun --standalone: a rendezvous on a free port of this machine.
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
    )
    outputs = elastic_launch(launch_config, run_rank)(config)
    return outputs[0]
