"""``lossbench distributed``: scale the vocabulary-parallel losses out over torch.distributed.

``lossbench distributed --world-size P`` launches P ranks itself (torch's elastic launcher) and
measures the world sizes 1, 2, 4, ... and P in one run; ``torchrun --nproc-per-node P -m
lossbench.bench distributed --world-size P`` does the same with torchrun's ranks. It writes
results/<device>/distributed.csv and distributed.png and prints a table. Run ``lossbench
distributed --help`` for the options.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch

from lossbench.bench.cases import DTYPES, LOSSES, PASSES
from lossbench.bench.distributed.implementations import DISTRIBUTED_IMPLEMENTATIONS
from lossbench.bench.distributed.launch import (
    BACKENDS,
    LaunchError,
    backend_note,
    choose_backend,
    launch,
    under_torchrun,
)
from lossbench.bench.distributed.results import (
    DISTRIBUTED_CSV,
    DISTRIBUTED_PNG,
    plot_scaling,
    summary_table,
    with_aggregates,
    write_distributed,
)
from lossbench.bench.distributed.worker import DistributedConfig
from lossbench.bench.provenance import bench_device, machine_load, provenance, results_folder
from lossbench.bench.results import ResultsFolderError, check_writable
from lossbench.bench.selection import flatten_names, names_argument, positive_int

# Shapes by where the run happens. CPU: fp32, small enough that P = 4 gloo ranks on 2 cores finish
# in a few minutes (a run took 1 min 10 s to 1 min 54 s there, six runs on 2026-12-02 with other
# jobs on the cores, load average 4 to 7). GPU (a choice, not yet measured): bf16 at the
# lm_head shapes of the issue, 8192 tokens and a 131072-class vocabulary (2 GiB of logits).
DEFAULTS = {
    "cpu": {"dtype": "fp32", "batch": 256, "classes": 16384, "classes_per_rank": 4096},
    "cuda": {"dtype": "bf16", "batch": 8192, "classes": 131072, "classes_per_rank": 32768},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Measure the vocabulary-parallel losses at world sizes 1, 2, 4, ... up to P: time per "
        "rank and of the slowest rank, peak memory, collectives and bytes per rank, strong and "
        "weak scaling and their efficiency, each case gated by agreement with the single-device "
        "float64 reference. Writes distributed.csv and distributed.png."
    )
    parser.add_argument(
        "--world-size", type=positive_int, default=2, help="P, the most ranks (default 2)"
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto (default): NCCL with P GPUs, a fake group with one GPU, gloo on the CPU",
    )
    for option, metavar, names, default in (
        (
            "--losses",
            "LOSS",
            [n for n, s in LOSSES.items() if s.family == "softmax"],
            "cross_entropy",
        ),
        ("--impls", "IMPL", list(DISTRIBUTED_IMPLEMENTATIONS), "all"),
        ("--passes", "PASS", list(PASSES), "all"),
    ):
        parser.add_argument(
            option,
            nargs="+",
            type=names_argument(names, option),
            metavar=metavar,
            help=f"of {', '.join(names)}, comma- or space-separated (default: {default})",
        )
    parser.add_argument("--dtype", choices=list(DTYPES), help="fp32 on a CPU, bf16 on a GPU")
    parser.add_argument("--batch", type=positive_int, help="rows N (256 on a CPU, 8192 on a GPU)")
    parser.add_argument(
        "--classes",
        type=positive_int,
        help="C of strong scaling, split p ways (16384 on a CPU, 131072 on a GPU)",
    )
    parser.add_argument(
        "--classes-per-rank",
        type=positive_int,
        help="classes per rank of weak scaling, C = p times it (4096 on a CPU, 32768 on a GPU)",
    )
    parser.add_argument(
        "--timing-budget",
        type=float,
        default=0.2,
        help="seconds of timed rounds per case, on the slowest rank (default 0.2)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the inputs' seed (default 0)")
    parser.add_argument(
        "--results-dir",
        type=Path,
        help="where to write (default: results/<device> in the repository)",
    )


def config_from(arguments: argparse.Namespace) -> DistributedConfig:
    """The run's configuration: the options, with the defaults of this machine's device."""
    backend = choose_backend(arguments.backend, arguments.world_size)
    defaults = DEFAULTS[
        "cuda" if backend in ("nccl", "fake") and torch.cuda.is_available() else "cpu"
    ]
    config = DistributedConfig(
        world_size=arguments.world_size,
        backend=backend,
        losses=flatten_names(arguments.losses, ["cross_entropy"]),
        impls=flatten_names(arguments.impls, DISTRIBUTED_IMPLEMENTATIONS),
        dtype=arguments.dtype or defaults["dtype"],
        batch=arguments.batch or defaults["batch"],
        classes=arguments.classes or defaults["classes"],
        classes_per_rank=arguments.classes_per_rank or defaults["classes_per_rank"],
        passes=flatten_names(arguments.passes, PASSES),
        timing_budget_s=arguments.timing_budget,
        seed=arguments.seed,
    )
    divisor = math.lcm(*config.world_sizes())
    if config.classes % divisor:
        raise LaunchError(
            f"--classes {config.classes} must split evenly over every world size measured "
            f"({config.world_sizes()}): a multiple of {divisor}"
        )
    return config


def run(arguments: argparse.Namespace) -> int:
    """``lossbench distributed [options]``: 0 on success, 1 with the reason when it cannot run."""
    is_rank_zero = int(os.environ.get("RANK", "0")) == 0 or not under_torchrun()
    try:
        config = config_from(arguments)
        results_dir = arguments.results_dir or results_folder(bench_device())
        if is_rank_zero:
            check_writable(results_dir)
            note = backend_note(config.backend, config.world_size)
            load, cpus = machine_load()
            print(
                f"distributed: {', '.join(config.losses)}, {config.dtype}, world sizes "
                f"{config.world_sizes()}, strong N = {config.batch} x C = {config.classes}, weak "
                f"C / p = {config.classes_per_rank}; {note}; load average {load:.1f} on {cpus} "
                "CPUs (a loaded machine times noisily)",
                file=sys.stderr,
                flush=True,
            )
        run_provenance = provenance(bench_device())
        rows = launch(config)
    except (LaunchError, ResultsFolderError) as error:
        print(f"lossbench distributed: {error}", file=sys.stderr)
        return 1
    if rows is None:  # a torchrun rank other than 0: rank 0 writes
        return 0
    rows = with_aggregates(rows)
    csv_path, png_path = results_dir / DISTRIBUTED_CSV, results_dir / DISTRIBUTED_PNG
    write_distributed(rows, run_provenance, csv_path)
    plot_scaling(csv_path, png_path)
    print(summary_table(rows))
    print(backend_note(config.backend, config.world_size))
    print(f"wrote {csv_path} and {png_path}")
    return 0
