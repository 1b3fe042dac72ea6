"""Command line: ``python -m bench plot results/<device>`` and ``python -m bench convergence ...``.

plot         redraw every plot and SUMMARY.md of a results folder from its CSV alone;
convergence  train the article's digit classifier with every implementation (bench/convergence.py).
The benchmarks themselves run under pytest: ``pytest bench/ --benchmark-only``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    plot = commands.add_parser("plot", help="redraw plots and SUMMARY.md from a results CSV")
    plot.add_argument("results_dir", type=Path, help="a results folder, e.g. results/h200")
    commands.add_parser(
        "convergence", help="train the digit classifier per implementation", add_help=False
    )
    if argv[:1] == ["convergence"]:
        from bench.convergence import main as convergence_main

        return convergence_main(argv[1:])
    arguments = parser.parse_args(argv)
    from bench.report import CSV_NAME, regenerate

    if not (arguments.results_dir / CSV_NAME).exists():
        parser.error(f"{arguments.results_dir / CSV_NAME} does not exist: run the benchmarks first")
    for path in regenerate(arguments.results_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
