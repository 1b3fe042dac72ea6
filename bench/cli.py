"""The ``lossbench`` command (``python -m lossbench.bench`` is the same): one subcommand per job.

The benchmarks themselves run under pytest: ``pytest bench/ --benchmark-only``. Each subcommand
lives in its own module, imported only when it runs (so ``lossbench plot`` starts no Triton),
which defines ``add_arguments(parser)`` and ``run(arguments) -> exit status``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand: (its module, what it does).
COMMANDS: dict[str, tuple[str, str]] = {
    "plot": (
        "lossbench.bench.report",
        "redraw the plots and SUMMARY.md of a results folder from its CSV alone",
    ),
    "convergence": (
        "lossbench.bench.convergence.cli",
        "train the article's digit classifier once per loss implementation",
    ),
    "distributed": (
        "lossbench.bench.distributed.cli",
        "scale the vocabulary-parallel losses out over torch.distributed ranks",
    ),
    "static": (
        "lossbench.bench.static.cli",
        "compile the fused kernels for sm_90 offline: compiler facts and estimated speed",
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="lossbench",
        description="lossbench: classification losses, their fused kernels, and how close "
        "they come to the hardware. The benchmarks run under pytest: pytest bench/ "
        "--benchmark-only.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints the usage, or the error, and exits
    name, *rest = argv
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    command = argparse.ArgumentParser(prog=f"lossbench {name}", description=help_text)
    module.add_arguments(command)
    return module.run(command.parse_args(rest))
