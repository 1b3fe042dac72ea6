"""What a user selects on a command line: comma lists of names and of sizes, checked once.

The pytest options of bench/ (``--losses cross_entropy,softmax_focal_loss``, ``--batch-sizes
8,64``) and every ``lossbench`` subcommand parse their lists here, so they accept and refuse the
same things with the same messages.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable


class SelectionError(ValueError):
    """A list that names something unknown, or holds no valid size; the message says which."""


def parse_names(text: str, known: Iterable[str], what: str) -> tuple[str, ...]:
    """The names in the comma list ``text``, in order, each one of ``known``."""
    known = tuple(known)
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise SelectionError(f"unknown {what} {unknown or text!r}; known: {', '.join(known)}")
    return names


def parse_sizes(text: str, what: str) -> tuple[int, ...]:
    """The positive integers in the comma list ``text``, in order."""
    try:
        sizes = tuple(int(size) for size in text.split(",") if size.strip())
    except ValueError:
        raise SelectionError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise SelectionError(f"{what} must be positive integers, got {text!r}")
    return sizes


def names_argument(known: Iterable[str], what: str) -> Callable[[str], tuple[str, ...]]:
    """An argparse ``type`` for a comma list of ``known`` names."""
    known = tuple(known)

    def names(text: str) -> tuple[str, ...]:
        try:
            return parse_names(text, known, what)
        except SelectionError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return names


def sizes_argument(what: str) -> Callable[[str], tuple[int, ...]]:
    """An argparse ``type`` for a comma list of positive integers."""

    def sizes(text: str) -> tuple[int, ...]:
        try:
            return parse_sizes(text, what)
        except SelectionError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return sizes


def flatten_names(given: Iterable[tuple[str, ...]] | None, known: Iterable[str]) -> tuple[str, ...]:
    """The names of an option given several times or with several values (``--impls torch,
    reference triton``), each parsed by ``names_argument``: flattened, in order, each once; all
    ``known`` names when the option was not given."""
    names = tuple(known) if given is None else tuple(name for group in given for name in group)
    return tuple(dict.fromkeys(names))


def positive_int(text: str) -> int:
    """An argparse ``type`` for one integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
