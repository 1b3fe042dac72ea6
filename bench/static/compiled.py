"""The compiler facts of one launch: one compiled kernel, its arguments and its grid.

``launch_facts`` joins three views of the kernel: the SASS (instructions, loops, access widths,
registers, spills), the kernel's Python source (how many times each loop turns, which pointer
each access goes through: lossbench.bench.static.source) and Triton's TTGIR (the shape of the
tensor each load and store moves, for counting how much of the logits a launch requests).

Dynamic counts are per launch: an instruction counts once per program, times the trip count of
every loop around it, times the count comment of every counted branch around it. Instructions a
branch skips in some programs count as executed unless the branch carries a count comment.
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from lossbench.bench.static import sass
from lossbench.bench.static.sass import Instruction, Location, Loop
from lossbench.bench.static.source import Evaluator, Region, SourceError, SourceFile, parse_source


@dataclass
class Access:
    """Global memory instructions of one kind through one pointer, per thread and program."""

    pointer: str  # the kernel argument, e.g. "logits_ptr"; "?" when the source does not say
    kind: str  # "load", "store" or "atomic"
    bits: int  # per thread and instruction: 8, 16, 32, 64 or 128
    per_program: float  # instructions executed per thread and program (mean over programs)


@dataclass
class TensorAccess:
    """One load or store of the TTGIR: the tensor it moves, and how often it runs."""

    pointer: str
    kind: str
    shape: tuple[int, ...]
    per_program: float  # executions per program (mean over programs)


@dataclass
class LaunchFacts:
    """What the compiler made of one launch (see the module docstring for the counting)."""

    kernel: str
    grid: int
    num_warps: int
    registers: int
    spill_bytes: int  # the stack frame ptxas spills into
    shared_bytes: int
    static_instructions: int
    warp_instructions: float  # executed per launch, all programs
    opcodes: dict[str, float] = field(default_factory=dict)  # base opcode -> per thread, program
    accesses: list[Access] = field(default_factory=list)
    tensor_accesses: list[TensorAccess] = field(default_factory=list)
    loops: list[str] = field(default_factory=list)  # "file:line xN" per SASS loop, for reading
    loop_spills: int = 0  # spill stores and loads (STL, LDL) inside a SASS loop

    def as_dict(self) -> dict:
        return asdict(self)


def _own_files(locations: list[Location]) -> dict[str, SourceFile]:
    """Parsed sources of the files the locations name, Triton's own files excluded."""
    import triton

    triton_folder = os.path.dirname(triton.__file__)
    files = {}
    for file, _ in locations:
        if file not in files and os.path.exists(file) and not file.startswith(triton_folder):
            files[file] = parse_source(file)
    return files


def _source_loop(loop: Loop, instructions: list[Instruction], regions: list[Region]) -> Region:
    """The source loop a SASS loop implements: the one holding most of its instructions, the
    innermost on a tie."""
    body = [instruction for instruction in instructions if loop.contains(instruction)]
    best, best_score = None, 0
    for region in regions:
        if region.kind not in ("for", "while"):
            continue
        score = sum(
            any(region.holds(location, header=True) for location in instruction.locations)
            for instruction in body
        )
        span = region.last_line - region.first_line
        if score > best_score or (
            score == best_score and best and span < best.last_line - best.first_line
        ):
            best, best_score = region, score
    if best is None:
        raise SourceError(f"a SASS loop at {loop.start:#x}-{loop.end:#x} matches no source loop")
    return best


def _count(region: Region, evaluator: Evaluator, source: SourceFile) -> np.ndarray:
    """How many times the region's body runs per program (per entry for a for loop)."""
    value = evaluator.evaluate(region.count, source, region.first_line)
    return value / evaluator.grid if region.per == "launch" else value


def _access_of(locations: tuple[Location, ...], files: Mapping[str, SourceFile]):
    """The innermost source access (load/store call) among ``locations``, or None."""
    for file, line in locations:
        source = files.get(file)
        if source and line in source.accesses:
            return source.accesses[line]
    return None


def _kernel_arguments(ttgir: str) -> tuple[list[str], set[str]]:
    """The compiled kernel's arguments in order (constexprs and specialised ones are gone), and
    which of them are pointers, from the TTGIR's function signature."""
    signature = re.search(r"tt\.func public @\w+\((.*?)\)\s+attributes", ttgir, re.DOTALL)
    text = signature.group(1) if signature else ""
    names = re.findall(r"%(\w+): ", text)
    pointers = set(re.findall(r"%(\w+): !tt\.ptr", text))
    return names, pointers


_TTGIR_ACCESS = re.compile(
    r"\btt\.(load|store|atomic_rmw|atomic_cas)\b.*?:\s*(.*?)\s+loc\((#loc\d*)\)"
)
_TTGIR_LOC = re.compile(r"^(#loc\d*) = loc\((.*)\)\s*$")


def _ttgir_locations(ttgir: str) -> dict[str, tuple[Location, ...]]:
    """Each #loc alias of the TTGIR resolved to its chain of (file, line), innermost first."""
    definitions = {
        match.group(1): match.group(2)
        for line in ttgir.splitlines()
        if (match := _TTGIR_LOC.match(line))
    }

    def resolve(text: str, depth: int = 0) -> tuple[Location, ...]:
        if depth > 50:
            return ()
        if text.startswith("#loc"):
            return resolve(definitions.get(text, "unknown"), depth + 1)
        if match := re.match(r'^"([^"]+)":(\d+):\d+', text):
            return ((match.group(1), int(match.group(2))),)
        if match := re.match(r"^callsite\((#loc\d*) at (#loc\d*)\)", text):
            return resolve(match.group(1), depth + 1) + resolve(match.group(2), depth + 1)
        if match := re.match(r'^"[^"]*"\((#loc\d*)\)', text):
            return resolve(match.group(1), depth + 1)
        if match := re.match(r"^fused\[(#loc\d*)", text):
            return resolve(match.group(1), depth + 1)
        return ()

    return {name: resolve(name) for name in definitions}


def _multiplier(
    locations: tuple[Location, ...],
    regions: list[Region],
    files: Mapping[str, SourceFile],
    evaluator: Evaluator,
    kinds: tuple[str, ...],
):
    """The product of the counts of the regions of ``kinds`` around a source location."""
    factor = 1.0
    for region in regions:
        if region.kind in kinds and any(region.holds(loc, header=False) for loc in locations):
            factor = factor * _count(region, evaluator, files[region.file])
    return factor


def _globals_by_file(files: Mapping[str, SourceFile]) -> dict[str, dict[str, object]]:
    """The module globals of each source file, for the constants its count expressions name."""
    by_file = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and os.path.realpath(path) in {os.path.realpath(file) for file in files}:
            by_file[next(f for f in files if os.path.realpath(f) == os.path.realpath(path))] = vars(
                module
            )
    return by_file


def launch_facts(
    compiled, arguments: Mapping[str, object], grid: int, kernel_file: str
) -> LaunchFacts:
    """The facts of ``compiled`` (a Triton CompiledKernel for sm_90) launched on ``grid``
    programs with ``arguments`` (name -> value; scalars matter, tensors are ignored);
    ``kernel_file`` is the source file of the kernel itself."""
    cubin = compiled.asm["cubin"]
    instructions = sass.disassemble(cubin)
    resources = sass.resource_usage(cubin)
    files = _own_files([loc for instruction in instructions for loc in instruction.locations])
    regions = [region for source in files.values() for region in source.regions]
    evaluator = Evaluator(arguments, grid, kernel_file, _globals_by_file(files))

    sass_loops = sass.loops(instructions)
    loop_regions = {loop: _source_loop(loop, instructions, regions) for loop in sass_loops}
    described = []
    for region in loop_regions.values():
        trips = _count(region, evaluator, files[region.file])
        described.append(
            f"{os.path.basename(region.file)}:{region.first_line} x{float(np.mean(trips)):g}"
        )

    names, pointers = _kernel_arguments(compiled.asm["ttgir"])
    offsets = sass.parameter_offsets(compiled.asm["ptx"])
    total = 0.0
    loop_spills = 0
    opcodes: Counter[str] = Counter()
    accesses: Counter[tuple[str, str, int]] = Counter()
    for position, instruction in enumerate(instructions):
        factor = 1.0
        # A counted branch around a loop counts for all of the loop's instructions, whatever
        # lines the compiler gave them.
        locations = list(instruction.locations)
        for loop, region in loop_regions.items():
            if loop.contains(instruction):
                factor = factor * _count(region, evaluator, files[region.file])
                locations.append((region.file, region.first_line))
                loop_spills += instruction.base in ("STL", "LDL")
        factor = factor * _multiplier(tuple(locations), regions, files, evaluator, ("if", "rest"))
        per_program = float(np.mean(np.broadcast_to(factor, (grid,))))
        total += per_program
        if per_program:
            opcodes[instruction.base] += per_program
        bits = instruction.access_bits()
        kind = {"LDG": "load", "STG": "store", "ATOMG": "atomic", "RED": "atomic"}.get(
            instruction.base
        )
        if kind:
            parameters = [
                names[index]
                for index in sass.address_parameters(instructions, position, offsets)
                if index < len(names) and names[index] in pointers
            ]
            pointer = parameters[0] if parameters else "?"
            accesses[(pointer, kind, bits or 32)] += per_program

    tensor_accesses = []
    chains = _ttgir_locations(compiled.asm["ttgir"])
    for line in compiled.asm["ttgir"].splitlines():
        match = _TTGIR_ACCESS.search(line)
        if not match:
            continue
        operation, type_text, location = match.groups()
        locations = chains.get(location, ())
        source_access = _access_of(locations, files)
        shape_match = re.search(r"tensor<((?:\d+x)+)", type_text)
        shape = (
            tuple(int(d) for d in shape_match.group(1).rstrip("x").split("x"))
            if shape_match
            else ()
        )
        factor = _multiplier(locations, regions, files, evaluator, ("for", "while", "if", "rest"))
        tensor_accesses.append(
            TensorAccess(
                pointer=source_access.pointer if source_access else "?",
                kind="load"
                if operation == "load"
                else "store"
                if operation == "store"
                else "atomic",
                shape=shape,
                per_program=float(np.mean(np.broadcast_to(factor, (grid,)))),
            )
        )

    return LaunchFacts(
        kernel=compiled.metadata.name,
        grid=grid,
        num_warps=compiled.metadata.num_warps,
        registers=resources.registers,
        spill_bytes=resources.local_bytes,
        shared_bytes=compiled.metadata.shared,
        static_instructions=len(instructions),
        warp_instructions=total * grid * compiled.metadata.num_warps,
        opcodes=dict(opcodes),
        accesses=[
            Access(pointer, kind, bits, count)
            for (pointer, kind, bits), count in sorted(accesses.items())
        ],
        tensor_accesses=tensor_accesses,
        loops=described,
        loop_spills=loop_spills,
    )
