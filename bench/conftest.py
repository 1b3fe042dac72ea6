"""pytest options, case generation and session state for the benchmarks in bench/.

    pytest bench/ --benchmark-only                        # quick on the CPU, full on a GPU
    pytest bench/ --benchmark-only --preset full --losses cross_entropy --impls torch,triton
    pytest bench/ --benchmark-disable --preset tiny --results-dir /tmp/tiny   # CI: runs once

The options apply to every suite in bench/. Results go to --results-dir (default
results/<device>/), checked to be writable before anything runs: the CSV after each case (at
most every few seconds) and at the end, then the plots and SUMMARY.md. The terminal shows a line
per case and, last of all, the headline speedups and where the results went; pytest-benchmark's
own table (a row per case, every statistic) shows with --benchmark-table.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import pytest
import torch

from lossbench.bench import provenance, report
from lossbench.bench.cases import DTYPES, IMPLEMENTATIONS, LOSSES, PRESETS
from lossbench.bench.results import (
    BENCHMARKS_CSV,
    ResultsFolderError,
    check_writable,
    load_results,
)
from lossbench.bench.selection import SelectionError, parse_names, parse_sizes
from lossbench.bench.session import BenchSession
from lossbench.bench.summary import headline_table, linear_headline_table


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lossbench", "lossbench benchmark selection")
    group.addoption(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="sweep to run: tiny (CI), quick (default on the CPU), full (default with CUDA)",
    )
    group.addoption("--losses", default=None, help=f"comma list of {', '.join(LOSSES)}")
    group.addoption("--impls", default=None, help=f"comma list of {', '.join(IMPLEMENTATIONS)}")
    group.addoption("--dtypes", default=None, help=f"comma list of {', '.join(DTYPES)}")
    group.addoption("--batch-sizes", default=None, help="comma list of batch sizes N")
    group.addoption("--class-counts", default=None, help="comma list of class counts C")
    group.addoption(
        "--hidden-sizes",
        default=None,
        help="comma list of hidden sizes D (linear_cross_entropy only)",
    )
    group.addoption(
        "--results-dir", default=None, help="where results go (default results/<device>)"
    )
    group.addoption(
        "--benchmark-table",
        action="store_true",
        help="also print pytest-benchmark's own table (a row per case, every statistic); "
        "without it lossbench's headline and SUMMARY.md report the run",
    )
    group.addoption(
        "--max-minutes",
        type=float,
        default=None,
        help="skip (with that reason) the cases that would start after this many minutes",
    )


def _selection(config: pytest.Config, option: str, parse, *args) -> tuple | None:
    """The parsed value of a comma-list option, None when not given; a usage error if bad."""
    value = config.getoption(option)
    if value is None:
        return None
    try:
        return parse(value, *args)
    except SelectionError as error:
        raise pytest.UsageError(f"{option}: {error}") from None


_SESSION = pytest.StashKey[BenchSession]()


# A 1-minute load average above this many processes per CPU means other work competes for the
# machine: its timings will be noisy, which the run says before it starts.
LOADED_PER_CPU = 0.5


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark reads its options
def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("--benchmark-table"):
        config.option.benchmark_quiet = True
    device = provenance.bench_device()
    preset_name = config.getoption("--preset") or ("full" if device.type == "cuda" else "quick")
    preset = PRESETS[preset_name]
    results_dir = config.getoption("--results-dir")
    config.stash[_SESSION] = BenchSession(
        device=device,
        preset=preset,
        losses=_selection(config, "--losses", parse_names, LOSSES, "loss") or tuple(LOSSES),
        impls=_selection(config, "--impls", parse_names, IMPLEMENTATIONS, "implementation")
        or preset.impls,
        dtypes=_selection(config, "--dtypes", parse_names, DTYPES, "dtype") or preset.dtypes,
        batch_sizes=_selection(config, "--batch-sizes", parse_sizes, "batch sizes"),
        class_counts=_selection(config, "--class-counts", parse_sizes, "class counts"),
        results_dir=Path(results_dir) if results_dir else provenance.results_folder(device),
        max_minutes=config.getoption("--max-minutes"),
        hidden_sizes=_selection(config, "--hidden-sizes", parse_sizes, "hidden sizes"),
        announce=functools.partial(_progress, config),
    )
    try:
        check_writable(config.stash[_SESSION].results_dir)
    except ResultsFolderError as error:
        raise pytest.UsageError(f"lossbench: {error} (choose another --results-dir)") from None


def pytest_report_header(config: pytest.Config) -> list[str]:
    session = config.stash[_SESSION]
    lines = [
        f"lossbench: preset {session.preset.name} on {session.device}, "
        f"results in {session.results_dir}",
    ]
    load, cpus = provenance.machine_load()
    if load > LOADED_PER_CPU * cpus:
        lines.append(
            f"lossbench: WARNING: this machine is busy (load average {load:.1f} on {cpus} "
            "CPUs): timings will be noisy; SUMMARY.md flags the noisy cases"
        )
    return lines


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "loss_case" in metafunc.fixturenames:
        cases = metafunc.config.stash[_SESSION].cases()
        metafunc.parametrize("loss_case", cases, ids=[case.id for case in cases])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    config.stash[_SESSION].total_cases = sum(
        1 for item in items if "loss_case" in getattr(item, "fixturenames", ())
    )


@pytest.fixture(scope="session")
def bench_session(request: pytest.FixtureRequest) -> BenchSession:
    """The session's device, selection (--preset, --losses, --impls, --dtypes) and results."""
    return request.config.stash[_SESSION]


@pytest.fixture(scope="session")
def bench_device(bench_session: BenchSession) -> torch.device:
    """The device benchmarks run on: the current CUDA GPU, else the CPU."""
    return bench_session.device


def pytest_sessionfinish(session: pytest.Session) -> None:
    bench = session.config.stash[_SESSION]
    if bench.done_cases == 0:
        return
    bench.write()
    _progress(
        session.config, f"lossbench: writing the plots and SUMMARY.md of {bench.results_dir} ..."
    )
    try:
        written = report.regenerate(bench.results_dir)
    except Exception as error:
        _progress(session.config, f"lossbench: drawing the plots failed: {error!r}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return
    _progress(session.config, f"lossbench: wrote {len(written)} plots and summary files")


def pytest_unconfigure(config: pytest.Config) -> None:
    """The headline and where the results went, after everything pytest prints."""
    bench = config.stash.get(_SESSION, None)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if bench is None or bench.done_cases == 0 or reporter is None:
        return
    frame = load_results(bench.results_dir)
    frame = frame[frame["run_date"] == bench.results.provenance["run_date"]]
    headline, linear = headline_table(frame), linear_headline_table(frame)
    if headline or not linear:
        reporter.write_sep("=", "lossbench: forward+backward speedup over torch eager")
        reporter.write_line(headline or "nothing was timed")
    if linear:
        reporter.write_sep("=", "lossbench: linear cross-entropy, forward+backward, largest shape")
        reporter.write_line(linear)
    reporter.write_line(
        f"results: {bench.results_dir / BENCHMARKS_CSV}, plots and SUMMARY.md beside it"
    )
    if bench.results.kept:
        reporter.write_line(
            f"kept the earlier, fuller measurements of {len(bench.results.kept)} cases that this "
            "run only skipped or did not time (a fresh --results-dir starts from nothing)"
        )


def _progress(config: pytest.Config, line: str) -> None:
    """Print one line to the terminal now, between pytest's own progress output.

    Output capturing is suspended for the line, so it shows while a test runs.
    """
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.ensure_newline()
        reporter.write_line(line)
