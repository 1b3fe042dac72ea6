"""The machine code of a compiled kernel: SASS instructions, their source lines, loops, resources.

Everything here reads a cubin with the tools that ship inside Triton's NVIDIA backend
(``nvdisasm`` and ``cuobjdump`` in triton/backends/nvidia/bin), so no CUDA toolkit or GPU is
needed. ``disassemble`` gives the kernel's instructions, each with its chain of source locations
(innermost first: a jitted helper's line, then the line that called it, ...) as Triton's line
information records them; ``loops`` finds the loops as backward branches; ``resource_usage``
gives registers, local memory (spills) and shared memory as the compiler fixed them.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# One source location: (file, line).
Location = tuple[str, int]


class DisassemblyError(RuntimeError):
    """The disassembler is missing or failed; the message says which and why."""


@dataclass(frozen=True)
class Instruction:
    """One SASS instruction of the kernel body."""

    address: int
    predicate: str  # "@P0", "@!P1" or ""
    opcode: str  # with its modifiers: "LDG.E.128", "MUFU.EX2", ...
    operands: str
    locations: tuple[Location, ...]  # innermost first; empty when the compiler recorded none
    branch_target: int | None = None  # where a BRA jumps to

    @property
    def base(self) -> str:
        """The opcode without modifiers: "LDG", "MUFU", ..."""
        return self.opcode.split(".", 1)[0]

    def access_bits(self) -> int | None:
        """Bits per thread of a global load or store (LDG, STG), None for anything else."""
        if self.base not in ("LDG", "STG"):
            return None
        for suffix, bits in ((".128", 128), (".64", 64), (".U16", 16), (".S16", 16)):
            if suffix in self.opcode:
                return bits
        if ".U8" in self.opcode or ".S8" in self.opcode:
            return 8
        return 32


@dataclass(frozen=True)
class Loop:
    """Instructions from ``start`` to the backward branch at ``end``, inclusive."""

    start: int
    end: int

    def contains(self, instruction: Instruction) -> bool:
        return self.start <= instruction.address <= self.end


@dataclass(frozen=True)
class ResourceUsage:
    """What the compiler fixed for one thread: registers, and local memory: its stack frame,
    where ptxas spills registers (these kernels call no functions), and any local arrays (none
    in these kernels). Shared memory is the launch's (Triton's metadata)."""

    registers: int
    local_bytes: int


def _tool(name: str) -> str:
    """The path of a binary shipped with Triton's NVIDIA backend."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.exists():
        raise DisassemblyError(f"{path} is missing: this Triton has no {name}")
    return str(path)


def _run_on_cubin(tool: str, arguments: list[str], cubin: bytes) -> str:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.cubin")
        with open(path, "wb") as file:
            file.write(cubin)
        completed = subprocess.run(
            [_tool(tool), *arguments, path], capture_output=True, text=True, check=False
        )
    if completed.returncode != 0:
        raise DisassemblyError(f"{tool} failed: {completed.stderr.strip()[-2000:]}")
    return completed.stdout


_INSTRUCTION = re.compile(
    r"^\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)\s*(.*?)\s*;"
)
_LABEL = re.compile(r"^(\.L_x_\d+):")
_LABEL_OPERAND = re.compile(r"\((\.L_x_\d+)\)")
_LOCATION = re.compile(r'//## File "([^"]+)", line (\d+)(?: inlined at "([^"]+)", line (\d+))?')


def disassemble(cubin: bytes) -> list[Instruction]:
    """The kernel body's instructions in address order, each with its source locations.

    The body ends at the branch-to-itself that follows the last EXIT; what comes after it
    (padding, and subroutines that rare slow paths call, such as a division's denormal case) is
    left out.
    """
    text = _run_on_cubin("nvdisasm", ["-c", "-gi"], cubin)
    rows: list[tuple[int, str, str, str, tuple[Location, ...]]] = []
    labels: dict[str, int] = {}
    pending_labels: list[str] = []
    chain: list[Location] = []
    fresh_chain = False
    for line in text.splitlines():
        if label := _LABEL.match(line):
            pending_labels.append(label.group(1))
            continue
        if location := _LOCATION.search(line):
            file, number, caller, caller_line = location.groups()
            if not fresh_chain:
                chain = [(file, int(number))]
                fresh_chain = True
            if caller:
                chain.append((caller, int(caller_line)))
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        fresh_chain = False
        address, predicate, opcode, operands = match.groups()
        for label in pending_labels:
            labels[label] = int(address, 16)
        pending_labels.clear()
        rows.append((int(address, 16), (predicate or "").strip(), opcode, operands, tuple(chain)))
    instructions = []
    for address, predicate, opcode, operands, locations in rows:
        target = None
        if opcode.split(".", 1)[0] == "BRA" and (label := _LABEL_OPERAND.search(operands)):
            target = labels.get(label.group(1))
        if target == address:
            break
        instructions.append(Instruction(address, predicate, opcode, operands, locations, target))
    if not instructions:
        raise DisassemblyError("nvdisasm printed no instructions")
    return instructions


def loops(instructions: list[Instruction]) -> list[Loop]:
    """Every loop of the body: a branch back to an earlier address closes one. Outer first."""
    found = [
        Loop(target, instruction.address)
        for instruction in instructions
        if (target := instruction.branch_target) is not None and target < instruction.address
    ]
    return sorted(found, key=lambda loop: (loop.start, -loop.end))


def resource_usage(cubin: bytes) -> ResourceUsage:
    """Registers and local bytes of the cubin's one kernel (cuobjdump -res-usage): STACK, the
    frame ptxas spills into (its log's "bytes stack frame"), plus LOCAL."""
    text = _run_on_cubin("cuobjdump", ["-res-usage"], cubin)
    match = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", text)
    if not match:
        raise DisassemblyError(f"no resource usage in cuobjdump's output:\n{text[-2000:]}")
    local_bytes = int(match.group(2)) + int(match.group(3))
    return ResourceUsage(registers=int(match.group(1)), local_bytes=local_bytes)


# --- Which kernel argument a load or store goes through --------------------------------------
# Source lines cannot say it: the compiler attributes a load to the statement that first uses
# its value. The address registers can: followed backwards, they lead to the constant-bank slot
# of a pointer argument (c[0x0][0x210] is the first kernel parameter on sm_90).

PARAMETER_BASE = 0x210
_PARAMETER = re.compile(r"\.param\s+\.(\w+)(?:\s+\.ptr)?(?:\s+\.global)?(?:\s+\.align\s+(\d+))?")
_SIZES = {"u64": 8, "s64": 8, "b64": 8, "f64": 8, "u32": 4, "s32": 4, "b32": 4, "f32": 4}
_REGISTER = re.compile(r"\b(U?R)(\d+)(\.64)?\b")
_CONSTANT = re.compile(r"c\[0x0\]\[(0x[0-9a-f]+)\]")
_NO_DESTINATION = {"STG", "STS", "STL", "ST", "RED", "BRA", "EXIT", "BAR", "CALL", "RET", "NOP"}


def parameter_offsets(ptx: str) -> dict[int, int]:
    """Constant-bank offset of each kernel parameter -> its index, from the PTX entry."""
    entry = ptx[ptx.index(".entry") :]
    entry = entry[: entry.index(")")]
    offsets = {}
    offset = PARAMETER_BASE
    for index, match in enumerate(_PARAMETER.finditer(entry)):
        size = _SIZES.get(match.group(1), 8)
        offset = -(-offset // size) * size
        offsets[offset] = index
        offset += size
    return offsets


def _registers(text: str, wide: bool) -> set[str]:
    """Register names in an operand text; a 64-bit operand (R2.64, or any of a wide op) also
    names the next register."""
    names = set()
    for kind, number, pair in _REGISTER.findall(text):
        names.add(f"{kind}{number}")
        if pair or wide:
            names.add(f"{kind}{int(number) + 1}")
    return names


def _operands(instruction: Instruction) -> tuple[str, str]:
    """(destination text, source text) of an instruction."""
    if instruction.base in _NO_DESTINATION or instruction.base.startswith("ATOM"):
        if instruction.base.startswith("ATOM"):
            destination, _, sources = instruction.operands.partition(",")
            destination, _, sources = sources.partition(",")  # skip the predicate
            return destination, sources
        return "", instruction.operands
    destination, _, sources = instruction.operands.partition(",")
    return destination, sources


def address_parameters(
    instructions: list[Instruction], position: int, offsets: dict[int, int]
) -> list[int]:
    """Indices of the kernel parameters the address of instruction ``position`` is computed
    from, nearest first (a backward slice over the instructions before it, ignoring branches:
    good enough for the straight-line address arithmetic Triton emits)."""
    memory = instructions[position]
    address = re.findall(r"\]\[([^\]]+)\]", memory.operands)
    wanted = _registers(address[0] if address else memory.operands, wide=False)
    found: list[int] = []
    for instruction in reversed(instructions[:position]):
        if not wanted:
            break
        destination, sources = _operands(instruction)
        wide = ".64" in instruction.opcode or ".WIDE" in instruction.opcode
        written = _registers(destination, wide) & wanted
        if not written:
            continue
        if not instruction.predicate:
            wanted -= written
        if instruction.base in ("LDG", "LDS", "LD", "LDL", "SHFL"):
            continue  # a value read from memory (a label, say): data, not the address's base
        wanted |= _registers(sources, wide=False)
        if ".WIDE" in instruction.opcode:  # its addend is 64-bit
            wanted |= _registers(sources.rsplit(",", 1)[-1], wide=True)
        for constant in _CONSTANT.findall(instruction.operands):
            index = offsets.get(int(constant, 16))
            if index is not None and index not in found:
                found.append(index)
    return found
