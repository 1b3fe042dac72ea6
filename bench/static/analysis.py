"""One row of the static table per case: the compiler facts of its launches, and the ESTIMATES
the speed model (lossbench.bench.static.hardware) derives from them.

Facts (from the compiler, exact for what was compiled):
    warps, tile (the shape of the main kernel's logits load), grid, registers, spill and shared
    bytes, programs per SM and occupancy, the widths of the logits loads and gradient stores,
    how many times the logits are read, the device launches of one forward+backward call, and
    SASS instructions per element.
Estimates (from the model's assumptions; every column name starts with ``est_``):
    bytes by design, DRAM time, issue time, their maximum, and the fraction of the copy
    bandwidth that time reaches.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from lossbench.bench.cases import DTYPES
from lossbench.bench.static import hardware
from lossbench.bench.static.cases import StaticCase

# Which kernel argument is which tensor, by name, in lossbench.kernels.
LOGITS_POINTERS = ("logits_ptr", "input_ptr")
GRADIENT_POINTERS = ("grad_ptr", "grad_input_ptr")
# Opcodes of the pipes that run at 16 results per clock and SM, an eighth of the issue rate.
QUARTER_RATE_OPCODES = ("MUFU", "I2F", "I2FP", "F2I", "F2F", "I2I")

COLUMNS = [
    "loss",
    "dtype",
    "target",
    "batch",
    "classes",
    "reduction",
    "kernel",
    "num_warps",
    "tile",
    "grid",
    "registers",
    "spill_bytes",
    "loop_spills",
    "shared_bytes",
    "programs_per_sm",
    "occupancy_limit",
    "occupancy",
    "logits_loads",
    "grad_stores",
    "wide_share",
    "logits_reads",
    "launches",
    "launch_list",
    "host_syncs",
    "sass_per_element",
    "slow_pipe_per_element",
    "est_bytes_design",
    "est_bytes_ideal",
    "est_dram_us",
    "est_issue_us",
    "est_time_us",
    "est_copy_fraction",
    "budget_sass_per_element",
]


@dataclass(frozen=True)
class Budget:
    """What a kernel must meet, per case: fp32 and bf16, forward+backward with 'mean'."""

    sass_per_element: float
    launches: int = 3  # device launches of one call, autograd's ones_like seed included
    # Spills: none (tests/test_kernels_compile.py allows every path of every kernel a frame of
    # 16 bytes outside loops, for other ptxas versions; the budget cases must not use it).
    spill_bytes: int = 0
    loop_spills: int = 0
    programs_per_sm: int = 2
    # Where the row stride allows 128-bit accesses, this share of the logits and gradient bytes
    # moves in them at least (the rest: one gather or fix-up per row).
    wide_share: float = 0.75


def budget(case: StaticCase) -> Budget:
    """The instruction budget of a case's loss and class count (fp32 and bf16 alike)."""
    if case.loss in ("cross_entropy", "softmax_focal_loss"):
        return Budget(45.0 if case.classes <= 16 else 31.0)
    return Budget(39.0 if case.loss == "binary_cross_entropy_with_logits" else 50.0)


def _widths(accesses: list[dict], pointers: tuple[str, ...], kind: str) -> str:
    """Per thread and program: "4 x 128-bit", "16 x 16-bit + 1 x 32-bit", or "-"."""
    counts = Counter()
    for access in accesses:
        if access["pointer"] in pointers and access["kind"] == kind:
            counts[access["bits"]] += access["per_program"]
    parts = [f"{count:g} x {bits}-bit" for bits, count in sorted(counts.items(), reverse=True)]
    return " + ".join(parts) or "-"


def _wide_share(accesses: list[dict]) -> float:
    """The share of the bytes a thread loads from the logits and stores to the gradient that
    move in 128-bit accesses (the rest: per-row gathers and fix-ups, or scalar accesses)."""
    wide = total = 0.0
    for access in accesses:
        if (access["pointer"], access["kind"]) in {
            *((pointer, "load") for pointer in LOGITS_POINTERS),
            *((pointer, "store") for pointer in GRADIENT_POINTERS),
        }:
            moved = access["bits"] * access["per_program"]
            total += moved
            wide += moved if access["bits"] == 128 else 0.0
    return wide / total if total else 0.0


def _logits_reads(facts: dict, case: StaticCase) -> float:
    """Logits elements the loads request over the logits' elements: a 2-D (rows, classes) load
    covers at most C classes per row (padding lanes are masked, they move nothing)."""
    covered = 0.0
    for access in facts["tensor_accesses"]:
        if access["pointer"] not in LOGITS_POINTERS or access["kind"] != "load":
            continue
        shape, runs = access["shape"], access["per_program"]
        if len(shape) == 2:
            covered += shape[0] * min(shape[1] * runs, case.classes)
        else:
            size = 1
            for extent in shape:
                size *= extent
            covered += size * runs
    return covered * facts["grid"] / case.elements


def _tile(facts: dict) -> str:
    """The shape of the main kernel's largest logits load, and how many such loads it has."""
    loads = [
        access
        for access in facts["tensor_accesses"]
        if access["pointer"] in LOGITS_POINTERS and access["kind"] == "load"
    ]
    if not loads:
        return "-"

    def size(access: dict) -> int:
        total = 1
        for extent in access["shape"]:
            total *= extent
        return total

    largest = max(loads, key=size)
    sites = sum(1 for access in loads if access["shape"] == largest["shape"])
    shape = " x ".join(str(extent) for extent in largest["shape"]) or "1"
    return shape if sites == 1 else f"{shape} ({sites} loads)"


def _target_bytes(case: StaticCase) -> int:
    if case.family == "softmax":
        return case.rows * 8
    size = {"uint8": 1, "bool": 1}.get(case.target) or DTYPES[case.target].itemsize
    return case.elements * size


def analyse(record: dict) -> dict[str, object]:
    """The table row of one record of ``offline.compile_cases``."""
    case = StaticCase.from_dict(record["case"])
    row: dict[str, object] = {
        "loss": case.loss,
        "dtype": case.dtype,
        "target": case.target,
        "batch": case.batch,
        "classes": case.classes,
        "reduction": case.reduction,
    }
    kernels = record["kernels"]
    main = max(kernels, key=lambda facts: facts["warp_instructions"])
    programs, limit = hardware.programs_per_sm(
        main["num_warps"], main["registers"], main["shared_bytes"]
    )
    element_bytes = DTYPES[case.dtype].itemsize
    logits_bytes = case.elements * element_bytes
    reads = _logits_reads(main, case)
    small_outputs = sum(
        access["per_program"] * facts["grid"] * 4
        for facts in kernels
        for access in facts["tensor_accesses"]
        if access["kind"] == "store"
        and access["pointer"] not in GRADIENT_POINTERS
        and len(access["shape"]) <= 1
    )
    bytes_ideal = logits_bytes * 2 + _target_bytes(case)  # logits once, gradient once
    bytes_design = logits_bytes * round(reads) + logits_bytes + _target_bytes(case) + small_outputs
    warp_instructions = sum(facts["warp_instructions"] for facts in kernels)
    slow_pipe = sum(
        count * facts["num_warps"] * facts["grid"]
        for facts in kernels
        for opcode, count in facts["opcodes"].items()
        if opcode in QUARTER_RATE_OPCODES
    )
    dram = hardware.dram_seconds(bytes_design)
    issue = hardware.issue_seconds(warp_instructions)
    estimated = max(dram, issue)
    row.update(
        kernel=main["kernel"],
        num_warps=main["num_warps"],
        tile=_tile(main),
        grid=main["grid"],
        registers=main["registers"],
        spill_bytes=max(facts["spill_bytes"] for facts in kernels),  # any launch of the call
        loop_spills=sum(facts.get("loop_spills", 0) for facts in kernels),
        shared_bytes=main["shared_bytes"],
        programs_per_sm=programs,
        occupancy_limit=limit,
        occupancy=round(hardware.occupancy(main["num_warps"], programs), 3),
        logits_loads=_widths(main["accesses"], LOGITS_POINTERS, "load"),
        grad_stores=_widths(main["accesses"], GRADIENT_POINTERS, "store"),
        wide_share=round(_wide_share(main["accesses"]), 2),
        logits_reads=round(reads, 2),
        launches=len(record["launches"]),
        launch_list="; ".join(record["launches"]),
        host_syncs=len(record["host_syncs"]),
        sass_per_element=round(warp_instructions * hardware.SM90.warp_size / case.elements, 1),
        slow_pipe_per_element=round(slow_pipe * hardware.SM90.warp_size / case.elements, 2),
        est_bytes_design=int(bytes_design),
        est_bytes_ideal=int(bytes_ideal),
        est_dram_us=round(dram * 1e6, 2),
        est_issue_us=round(issue * 1e6, 2),
        est_time_us=round(estimated * 1e6, 2),
        est_copy_fraction=round(hardware.dram_seconds(bytes_ideal) / estimated, 3),
        budget_sass_per_element=budget(case).sass_per_element,
    )
    return row


def _stride_allows_wide(case: StaticCase) -> bool:
    """Whether 16-byte accesses fit the logits' rows: always for the elementwise sigmoid losses
    (flat), for softmax rows of C classes when C elements are a multiple of 16 bytes."""
    if case.family == "sigmoid":
        return True
    return case.classes * DTYPES[case.dtype].itemsize % 16 == 0


def over_budget(row: dict[str, object]) -> list[str]:
    """What of the issue's budget a row breaks, in words; empty when it holds."""
    case = StaticCase(row["loss"], row["dtype"], row["batch"], row["classes"], row["target"])
    limits = budget(case)
    problems = []
    if _stride_allows_wide(case) and row["wide_share"] < limits.wide_share:
        problems.append(
            f"only {row['wide_share']:.0%} of the logits and gradient bytes move in 128-bit "
            "accesses"
        )
    if row["sass_per_element"] > limits.sass_per_element:
        problems.append(
            f"{row['sass_per_element']} SASS instructions per element > {limits.sass_per_element}"
        )
    if row["spill_bytes"] > limits.spill_bytes:
        problems.append(f"{row['spill_bytes']} bytes of spill frame > {limits.spill_bytes}")
    if row.get("loop_spills", 0) > limits.loop_spills:
        problems.append(f"{row['loop_spills']} spill instructions inside loops")
    if row["programs_per_sm"] < limits.programs_per_sm:
        problems.append(f"{row['programs_per_sm']} program(s) per SM < {limits.programs_per_sm}")
    if row["reduction"] == "mean" and row["launches"] > limits.launches:
        problems.append(f"{row['launches']} device launches > {limits.launches}")
    return problems
