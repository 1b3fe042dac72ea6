"""``lossbench convergence``: train the digit CNN per implementation, write the CSV and plot.

Run ``lossbench convergence --help`` for the options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lossbench.bench.cases import LOSSES
from lossbench.bench.convergence import ConvergenceError
from lossbench.bench.convergence.data import (
    DATA_SETS,
    TASKS,
    DigitData,
    load_digits_data,
    load_mnist_data,
)
from lossbench.bench.convergence.results import (
    CONVERGENCE_CSV,
    CONVERGENCE_PNG,
    fuller_run_on_disk,
    plot_convergence,
    results_rows,
    summary_table,
    write_convergence,
)
from lossbench.bench.convergence.train import (
    DEFAULT_CPU_THREADS,
    DEFAULT_EPOCHS,
    TRAINED_IMPLEMENTATIONS,
    TrainingConfig,
    run_convergence,
    selected_pairs,
)
from lossbench.bench.provenance import bench_device, device_name, results_folder
from lossbench.bench.results import ResultsFolderError, check_writable
from lossbench.bench.selection import flatten_names, names_argument, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Train the article's digit CNN once per loss implementation (same seed, weights and "
        "data order, float32) and write convergence.csv and convergence.png."
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        help=f"epochs per run (default: {DEFAULT_EPOCHS['digits']} for digits, "
        f"{DEFAULT_EPOCHS['mnist']} for MNIST)",
    )
    for option, metavar, names, what in (
        ("--tasks", "TASK", list(TASKS), "task types"),
        ("--losses", "LOSS", list(LOSSES), "losses (each trains the tasks it fits)"),
        ("--impls", "IMPL", list(TRAINED_IMPLEMENTATIONS), "implementations"),
    ):
        parser.add_argument(
            option,
            nargs="+",
            type=names_argument(names, option),
            metavar=metavar,
            help=f"{what}, of {', '.join(names)}, comma- or space-separated (default: all)",
        )
    parser.add_argument(
        "--data",
        default="digits",
        choices=DATA_SETS,
        help="digits: scikit-learn's 8x8 digits, offline (default); mnist: torchvision's MNIST",
    )
    parser.add_argument("--data-root", type=Path, help="folder holding MNIST/raw (--data mnist)")
    parser.add_argument("--download", action="store_true", help="download MNIST into --data-root")
    parser.add_argument(
        "--results-dir",
        type=Path,
        help="where to write (default: results/<device> in the repository)",
    )
    parser.add_argument(
        "--max-steps", type=positive_int, help="stop every epoch after this many steps"
    )
    parser.add_argument("--seed", type=int, default=0, help="weights and data order (default 0)")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=DEFAULT_CPU_THREADS,
        help=f"CPU threads when training on the CPU (default {DEFAULT_CPU_THREADS})",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a convergence.csv that holds a fuller run (more epochs, longer epochs, "
        "other runs or another data set); without it such a run is refused before training",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _load_data(arguments: argparse.Namespace) -> DigitData:
    if arguments.data == "mnist":
        if arguments.data_root is None:
            raise ConvergenceError("--data mnist needs --data-root DIR")
        return load_mnist_data(arguments.data_root, arguments.download)
    if arguments.data_root is not None or arguments.download:
        raise ConvergenceError("--data-root and --download apply to --data mnist only")
    return load_digits_data()


def run(arguments: argparse.Namespace) -> int:
    """``lossbench convergence [options]``: train, write the CSV and plot, print a summary.

    Returns 0 on success and 1, after printing why, when the run cannot start (an implementation
    or the data set is missing, options contradict each other, the results folder is not
    writable).
    """
    arguments.tasks = flatten_names(arguments.tasks, TASKS)
    arguments.losses = flatten_names(arguments.losses, LOSSES)
    arguments.impls = flatten_names(arguments.impls, TRAINED_IMPLEMENTATIONS)
    device = bench_device()
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(arguments.threads)
    try:
        return _run(arguments, device)
    finally:
        torch.set_num_threads(threads)


def _run(arguments: argparse.Namespace, device: torch.device) -> int:
    results_dir = arguments.results_dir or results_folder(device)
    csv_path, png_path = results_dir / CONVERGENCE_CSV, results_dir / CONVERGENCE_PNG
    try:
        check_writable(results_dir)
        data = _load_data(arguments)
        epochs = arguments.epochs or DEFAULT_EPOCHS[data.name]
        config = TrainingConfig(
            epochs, seed=arguments.seed, max_steps_per_epoch=arguments.max_steps
        )
        pairs = selected_pairs(arguments.tasks, arguments.losses)
        trained = {(task.name, loss, impl) for task, loss in pairs for impl in arguments.impls}
        steps = config.steps_per_epoch(len(data.train_labels))
        lost = fuller_run_on_disk(csv_path, data.name, epochs, steps, trained)
        if lost and not arguments.overwrite:
            raise ConvergenceError(
                f"{csv_path} holds a fuller run than this one would write ({lost}): pass "
                "--overwrite to replace it, or --results-dir to write elsewhere"
            )
        print(
            f"convergence: {data.description} ({len(data.train_labels)} train, "
            f"{len(data.test_labels)} test images), {epochs} epochs of "
            f"{config.steps_per_epoch(len(data.train_labels))} steps, on {device_name(device)}",
            file=sys.stderr,
        )
        runs = run_convergence(
            data, pairs, arguments.impls, config, device, not arguments.no_progress
        )
    except (ConvergenceError, ResultsFolderError) as error:
        print(f"lossbench convergence: {error}", file=sys.stderr)
        return 1
    write_convergence(results_rows(runs, data, config, device), csv_path)
    plot_convergence(csv_path, png_path)
    print(summary_table(runs))
    print(f"wrote {csv_path} and {png_path}")
    return 0
