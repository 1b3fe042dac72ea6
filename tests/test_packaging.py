"""lossbench installs one top-level name, lossbench: it shadows no other package.

`kernels` (Hugging Face's kernel hub), `reference` and `bench` are packages of their own on the
package index; an environment with any of them must keep it importable beside lossbench.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import REPOSITORY_ROOT

TOP_LEVEL_FOLDERS = ("kernels", "reference", "bench")


def _python(code: str, cwd: Path, pythonpath: str = "") -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": pythonpath}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_card_folders_are_not_installed_as_top_level_packages(tmp_path: Path) -> None:
    completed = _python(
        "import importlib.util\n"
        f"print([n for n in {TOP_LEVEL_FOLDERS!r} if importlib.util.find_spec(n) is not None])",
        cwd=tmp_path,  # not the checkout, whose folders the working directory would expose
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_other_packages_of_those_names_stay_importable_beside_lossbench(tmp_path: Path) -> None:
    for name in TOP_LEVEL_FOLDERS:
        (tmp_path / "site" / name).mkdir(parents=True)
        (tmp_path / "site" / name / "__init__.py").write_text(f"OWNER = 'another {name}'\n")
    completed = _python(
        "import bench, kernels, reference\n"
        "import lossbench.bench.cases, lossbench.kernels, lossbench.reference\n"
        "print(kernels.OWNER, reference.OWNER, bench.OWNER)\n"
        "print(lossbench.kernels.cross_entropy.__module__, lossbench.reference.__name__)",
        cwd=tmp_path,
        pythonpath=str(tmp_path / "site"),
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == [
        "another kernels another reference another bench",
        "lossbench.kernels.softmax lossbench.reference",
    ]


def test_importing_the_harness_or_plotting_starts_no_triton(tmp_path: Path) -> None:
    completed = _python(
        "import sys\n"
        "import lossbench.bench.cli, lossbench.bench.report, lossbench.kernels\n"
        "print('triton' in sys.modules)",
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "False"


DOUBLE_IMPORT_PLUGIN = """
import collections, os, sys

def pytest_collection_finish(session):
    by_file = collections.defaultdict(dict)
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and path.startswith(os.environ["CHECKOUT"]):
            by_file[path].setdefault(id(module), name)
    for path, modules in by_file.items():
        if len(modules) > 1:
            print("IMPORTED TWICE", path, sorted(modules.values()))
"""


PLUGINS = ("-p", "double_import_check", "-p", "no:cacheprovider")


def test_pytest_imports_no_file_of_the_checkout_twice(tmp_path: Path) -> None:
    """`pytest bench/` and `pytest` collect modules of lossbench.bench and tests/: each file must
    be one module, not a second copy under a name pytest derives from its folder."""
    (tmp_path / "double_import_check.py").write_text(DOUBLE_IMPORT_PLUGIN)
    repository = REPOSITORY_ROOT
    for target in ("bench/", "tests/"):
        completed = subprocess.run(
            [sys.executable, "-m", "pytest", target, "--collect-only", "-q", *PLUGINS],
            cwd=repository,
            # PYTHONSAFEPATH: python -m would otherwise put the checkout itself on sys.path.
            env={
                **os.environ,
                "PYTHONPATH": str(tmp_path),
                "PYTHONSAFEPATH": "1",
                "CHECKOUT": str(repository),
            },
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
        assert "IMPORTED TWICE" not in completed.stdout, completed.stdout


def test_every_package_folder_is_installed() -> None:
    """A non-editable install copies only the packages pyproject.toml lists: a subpackage left
    out of the list would work from the checkout and be missing from a wheel."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    settings = tomllib.loads((REPOSITORY_ROOT / "pyproject.toml").read_text())["tool"]
    folders = settings["setuptools"]["package-dir"]
    listed = set(settings["setuptools"]["packages"])
    on_disk = {
        ".".join([name, *init.parent.relative_to(REPOSITORY_ROOT / folder).parts])
        for name, folder in folders.items()
        for init in (REPOSITORY_ROOT / folder).rglob("__init__.py")
    }
    assert listed == on_disk
