"""What a kernel's Python source says about its machine code: how often each part runs, and
which tensor each load and store touches.

SASS shows a loop (a backward branch) but not how many times it turns; the source does. Each
``for`` over ``range(...)`` or ``tl.range(...)`` turns as its bounds say, evaluated with the
launch's arguments. A ``while`` loop, or an ``if`` whose body runs in only some programs, states
its count in a comment on its first line, which this module reads::

    while claim < n_chunks:  # runs n_chunks times per launch
    if ticket == tl.num_programs(0) - 1:  # runs once per launch
    if scale != 1.0:  # runs 0 if upstream_is_one else 1 times per program

An ``if`` whose body returns early can say how often the rest of the kernel runs, on its line
or on a comment line just above it::

    # lossbench static: the rest runs 0 if upstream_is_one else 1 times per program
    if tl.load(upstream_ptr) == 1.0:
        return

The count is a Python expression over the kernel's arguments (constexprs included), the
assignments above it in the kernel, ``tl.cdiv``, ``tl.program_id(0)``, ``tl.num_programs(0)``,
and ``upstream_is_one`` (whether the launch's upstream gradient is 1, as ``loss.backward()``
passes it). An ``if`` without such a comment counts as taken; a loop the analyser cannot
count is an error, not a guess.
"""

from __future__ import annotations

import ast
import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from lossbench.bench.static.sass import Location

_COUNT_COMMENT = re.compile(
    r"#.*?\b(?P<rest>the rest )?runs (?:(?P<once>once)|(?P<expr>.+?) times?) per "
    r"(?P<per>launch|program)\b"
)


class SourceError(ValueError):
    """A part of the kernel the analyser cannot count; the message names the line."""


@dataclass(frozen=True)
class Region:
    """A loop, or a branch with a count comment, of one source file.

    Lines ``first_line`` (the ``for``/``while``/``if`` line) to ``last_line``. ``count`` is an
    expression: per entry for a ``for`` (its trip count), per launch or per program for a counted
    ``while`` or ``if`` (``per``). A ``rest`` region is the rest of a function after an early
    return: its ``first_line`` is the returning ``if``'s last line.
    """

    file: str
    first_line: int
    last_line: int
    kind: str  # "for", "while", "if" or "rest"
    count: str
    per: str  # "entry", "program" or "launch"

    def holds(self, location: Location, header: bool) -> bool:
        """Whether ``location`` lies in the region: its body, and its first line if ``header``."""
        file, line = location
        first = self.first_line if header else self.first_line + 1
        return file == self.file and first <= line <= self.last_line


@dataclass(frozen=True)
class Access:
    """A ``tl.load``, ``tl.store`` or ``tl.atomic_*`` call and the pointer argument it goes
    through (the leftmost name of its address expression, e.g. ``logits_ptr``)."""

    kind: str  # "load", "store" or "atomic"
    pointer: str


@dataclass(frozen=True)
class SourceFile:
    """The regions and memory accesses of one file, and its functions' assignments."""

    path: str
    regions: tuple[Region, ...]
    accesses: dict[int, Access]  # by line, every line of the call
    # function -> (line, name, expression, conditions): conditions are the (test, taken) pairs of
    # the ifs around the assignment, so that a branch a constexpr rules out is skipped.
    assignments: dict[str, tuple[tuple[int, str, str, tuple[tuple[str, bool], ...]], ...]]
    functions: dict[str, tuple[int, int]]  # function -> (first line, last line)


def _pointer_name(node: ast.expr) -> str:
    while True:
        if isinstance(node, ast.BinOp):
            node = node.left
        elif isinstance(node, ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Name):
            return node.id
        else:
            return ast.unparse(node)


def _call_name(node: ast.Call) -> str:
    return ast.unparse(node.func)


def _for_count(node: ast.For) -> str | None:
    """The trip count expression of ``for _ in range(...)`` / ``tl.range(...)``; None when the
    loop is unrolled at compile time (``tl.static_range``)."""
    if not isinstance(node.iter, ast.Call):
        raise SourceError(f"line {node.lineno}: a for loop over something other than a range")
    name = _call_name(node.iter)
    if name.endswith("static_range"):
        return None
    if name not in ("range", "tl.range", "triton.language.range"):
        raise SourceError(f"line {node.lineno}: a for loop over {name}(...), not a range")
    bounds = [ast.unparse(argument) for argument in node.iter.args[:3]]
    if len(bounds) == 1:
        bounds.insert(0, "0")
    if len(bounds) == 2:
        bounds.append("1")
    return "_trips({}, {}, {})".format(*bounds)


def _collect_assignments(
    statements: list[ast.stmt],
    conditions: tuple[tuple[str, bool], ...],
    into: list[tuple[int, str, str, tuple[tuple[str, bool], ...]]],
) -> None:
    """Every ``name = expression`` in ``statements`` and the blocks inside them, with the tests
    of the ifs around it (an elif's test comes with its predecessors' tests, negated)."""
    for statement in statements:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target = statement.targets[0]
            if isinstance(target, ast.Name):
                into.append((statement.lineno, target.id, ast.unparse(statement.value), conditions))
        elif isinstance(statement, ast.If):
            test = ast.unparse(statement.test)
            _collect_assignments(statement.body, (*conditions, (test, True)), into)
            _collect_assignments(statement.orelse, (*conditions, (test, False)), into)
        elif isinstance(statement, ast.For | ast.While):
            _collect_assignments(statement.body, conditions, into)


@functools.cache
def parse_source(path: str) -> SourceFile:
    """Read ``path`` once: the regions, accesses and assignments of its jitted functions."""
    with open(path) as file:
        text = file.read()
    lines = text.splitlines()
    tree = ast.parse(text)
    regions = []
    accesses: dict[int, Access] = {}
    assignments: dict[str, list[tuple[int, str, str, tuple[tuple[str, bool], ...]]]] = {}
    functions = {}
    for function in ast.walk(tree):
        jitted = isinstance(function, ast.FunctionDef) and any(
            "jit" in ast.unparse(decorator) for decorator in function.decorator_list
        )
        if not jitted:
            continue
        functions[function.name] = (function.lineno, function.end_lineno)
        own = assignments.setdefault(function.name, [])
        _collect_assignments(function.body, (), own)
        for node in ast.walk(function):
            if isinstance(node, ast.Call):
                name = _call_name(node)
                kind = {"tl.load": "load", "tl.store": "store"}.get(name)
                if name.startswith("tl.atomic_"):
                    kind = "atomic"
                if kind and node.args:
                    access = Access(kind, _pointer_name(node.args[0]))
                    for line in range(node.lineno, node.end_lineno + 1):
                        accesses.setdefault(line, access)
            if isinstance(node, ast.For | ast.While | ast.If):
                comment = _COUNT_COMMENT.search(lines[node.lineno - 1])
                above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
                if comment is None and above.startswith("#"):
                    comment = _COUNT_COMMENT.search(above)
                if comment and comment.group("rest"):
                    count = "1" if comment.group("once") else comment.group("expr")
                    regions.append(
                        Region(
                            path,
                            node.end_lineno,
                            function.end_lineno,
                            "rest",
                            count,
                            comment.group("per"),
                        )
                    )
                    continue
                if comment:
                    count = "1" if comment.group("once") else comment.group("expr")
                    per = comment.group("per")
                elif isinstance(node, ast.For):
                    count, per = _for_count(node), "entry"
                    if count is None:
                        continue
                elif isinstance(node, ast.While):
                    raise SourceError(
                        f"{path}:{node.lineno}: a while loop needs a count comment "
                        "('# runs <expression> times per launch|program')"
                    )
                else:
                    continue
                kind = type(node).__name__.lower()
                regions.append(Region(path, node.lineno, node.end_lineno, kind, count, per))
        own.sort()
    return SourceFile(
        path,
        tuple(regions),
        accesses,
        {name: tuple(rows) for name, rows in assignments.items()},
        functions,
    )


def _trips(start, stop, step):
    """Turns of ``range(start, stop, step)``, elementwise over numpy arrays."""
    return np.maximum(0, -((np.asarray(start) - np.asarray(stop)) // np.asarray(step)))


class _DropCasts(ast.NodeTransformer):
    """``x.to(tl.int64)`` -> ``x``: casts do not change a count."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.func, ast.Attribute) and node.func.attr == "to":
            return node.func.value
        return node


def _without_casts(expression: str) -> str:
    return ast.unparse(_DropCasts().visit(ast.parse(expression, mode="eval")))


def _upstream_is_one(arguments: Mapping[str, object]) -> bool:
    """Whether the launch's upstream gradient (``upstream_ptr``, or ``scale_ptr``) holds 1, read
    from the tensor the call passed (the analysed calls run with real upstream values; a
    full-shape upstream is uniform there); True for a launch without one."""
    upstream = arguments.get("upstream_ptr", arguments.get("scale_ptr"))
    if upstream is None or not hasattr(upstream, "reshape") or upstream.numel() == 0:
        return True
    return bool(upstream.reshape(-1)[0].item() == 1)


class Evaluator:
    """Evaluates count expressions of one launch: its arguments, one value per program where an
    expression involves ``tl.program_id(0)``.

    Names: the kernel's arguments over its module's constants for a region of the kernel's own
    file; a helper module's constants over the arguments for a region of another file (a jitted
    helper from kernels._common reads that module's constants, not the kernel's arguments).
    """

    def __init__(
        self,
        arguments: Mapping[str, object],
        grid: int,
        kernel_file: str,
        globals_by_file: Mapping[str, Mapping[str, object]],
    ):
        self.grid = grid
        self.kernel_file = kernel_file
        self.globals_by_file = globals_by_file
        program_ids = np.arange(grid, dtype=np.int64)
        language = SimpleNamespace(
            cdiv=lambda a, b: -(-np.asarray(a) // np.asarray(b)),
            program_id=lambda axis=0: program_ids,
            num_programs=lambda axis=0: grid,
            maximum=np.maximum,
            minimum=np.minimum,
        )
        self.arguments = {
            name: value
            for name, value in arguments.items()
            if isinstance(value, int | float | bool)
        }
        self.builtins = {
            "tl": language,
            "triton": SimpleNamespace(cdiv=language.cdiv),
            "_trips": _trips,
            "upstream_is_one": _upstream_is_one(arguments),
            "min": np.minimum,
            "max": np.maximum,
            "math": math,
        }

    def _constants(self, file: str) -> dict[str, object]:
        """The numeric and constexpr module-level names of ``file``'s module."""
        names = {}
        for name, value in self.globals_by_file.get(file, {}).items():
            inner = getattr(value, "value", value) if type(value).__name__ == "constexpr" else value
            if isinstance(inner, int | float | bool) and not name.startswith("__"):
                names[name] = inner
        return names

    @staticmethod
    def _may_run(conditions: tuple[tuple[str, bool], ...], names: dict[str, object]) -> bool:
        """False when an if test around an assignment evaluates (a constexpr, say) against it;
        True when every test agrees or cannot be evaluated."""
        for test, taken in conditions:
            try:
                value = eval(_without_casts(test), {"__builtins__": {}}, names)
            except Exception:
                continue
            if isinstance(value, np.ndarray) and value.size != 1:
                continue
            if bool(value) != taken:
                return False
        return True

    def evaluate(self, expression: str, source: SourceFile, line: int) -> np.ndarray:
        """``expression`` at ``line`` of ``source``: the arguments, then the assignments of the
        enclosing function above that line that evaluate (others are skipped)."""
        constants = self._constants(source.path)
        if source.path == self.kernel_file:
            names = {**constants, **self.arguments, **self.builtins}
        else:
            names = {**self.arguments, **constants, **self.builtins}
        function = next(
            (
                name
                for name, (first, last) in source.functions.items()
                if first <= line <= last and name in source.assignments
            ),
            None,
        )
        for assigned_at, name, value, conditions in source.assignments.get(function, ()):
            if assigned_at >= line:
                break
            if not self._may_run(conditions, names):
                continue
            try:
                names[name] = eval(_without_casts(value), {"__builtins__": {}}, names)
            except Exception:
                names.pop(name, None)
        try:
            value = eval(_without_casts(expression), {"__builtins__": {}}, names)
        except Exception as error:
            raise SourceError(
                f"{source.path}:{line}: cannot evaluate the count {expression!r}: {error}"
            ) from None
        return np.asarray(value, dtype=np.float64)
