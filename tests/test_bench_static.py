"""The static analyser's own parts (lossbench.bench.static): the occupancy and speed model, how it
counts loops from the kernel source, which pointer an access goes through, the budget verdict,
and ``lossbench static`` end to end on one small case."""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path

import pytest
import torch

from lossbench.bench import cli
from lossbench.bench.provenance import PROVENANCE_COLUMNS
from lossbench.bench.static import hardware, sass
from lossbench.bench.static.analysis import COLUMNS, over_budget
from lossbench.bench.static.source import Evaluator, SourceError, parse_source


@pytest.mark.parametrize(
    ("num_warps", "registers", "shared", "programs", "limit"),
    [
        # The table: 8 warps at 48 registers: 5 programs; 32 warps at 45: 1; 16 warps
        # at 40: 3; 8 warps at 64: 4, at 128: 2 (registers allocated per warp in units of 256).
        (8, 48, 0, 5, "registers"),
        (32, 45, 0, 1, "registers"),
        (16, 40, 0, 3, "registers"),
        (8, 64, 0, 4, "registers"),
        (8, 128, 0, 2, "registers"),
        (4, 24, 0, 16, "threads"),  # 2048 threads per SM
        (1, 16, 0, 32, "blocks"),  # 32 blocks per SM
        (4, 32, 100 * 1024, 2, "shared memory"),  # 228 KiB, 1 KiB reserved per block
    ],
)
def test_programs_per_sm_follow_the_sm90_limits(
    num_warps: int, registers: int, shared: int, programs: int, limit: str
) -> None:
    assert hardware.programs_per_sm(num_warps, registers, shared) == (programs, limit)


def test_instruction_budgets_break_even_with_the_copy_bandwidth() -> None:
    # The figures: ~31 instructions per element for bf16 cross-entropy (2 bytes read, 2
    # written), ~39 for BCE with uint8 targets (2 + 1 + 2).
    assert hardware.instruction_budget(4) == pytest.approx(31, abs=0.5)
    assert hardware.instruction_budget(5) == pytest.approx(39, abs=0.5)


KERNEL_SOURCE = textwrap.dedent(
    """
    import triton
    import triton.language as tl

    STEPS: tl.constexpr = tl.constexpr(3)


    @triton.jit
    def kernel(x_ptr, n, BLOCK: tl.constexpr, FAST: tl.constexpr):
        steps = tl.cdiv(n, BLOCK)
        for step in range(0, steps):
            tl.store(x_ptr + step, 1.0)
        if FAST:
            width = 4
        else:
            width = 8
        for lane in range(0, width):
            pass
        claim = tl.atomic_add(x_ptr, 1)
        while claim < n:  # runs n times per launch
            claim = tl.atomic_add(x_ptr, 1)
        if claim == 0:  # runs once per launch
            pass
        for step in tl.static_range(STEPS):
            pass
    """
)


def test_loops_and_count_comments_are_read_from_the_source(tmp_path: Path) -> None:
    path = tmp_path / "counted.py"
    path.write_text(KERNEL_SOURCE)
    source = parse_source(str(path))
    kinds = [(region.kind, region.per) for region in source.regions]
    # The static_range is unrolled by the compiler: no region.
    assert sorted(kinds) == sorted(
        [("for", "entry"), ("for", "entry"), ("while", "launch"), ("if", "launch")]
    )
    assert source.accesses[12].pointer == "x_ptr" and source.accesses[12].kind == "store"
    evaluator = Evaluator({"n": 1000, "BLOCK": 64, "FAST": True}, 10, str(path), {})
    counts = {region.first_line: region for region in source.regions}
    assert evaluator.evaluate(counts[11].count, source, 11) == 16  # cdiv(1000, 64) turns
    # The assignment under the constexpr branch not taken is skipped: 4 lanes, not 8.
    assert evaluator.evaluate(counts[17].count, source, 17) == 4
    assert evaluator.evaluate(counts[20].count, source, 20) == 1000  # per launch


def test_a_while_loop_without_a_count_comment_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "uncounted.py"
    path.write_text(KERNEL_SOURCE.replace("  # runs n times per launch", ""))
    with pytest.raises(SourceError, match="needs a count comment"):
        parse_source(str(path))


def test_an_access_goes_through_the_pointer_its_address_is_computed_from() -> None:
    ptx = (
        ".visible .entry k(\n .param .u64 .ptr .global .align 1 k_param_0,\n"
        " .param .u32 k_param_1,\n .param .u64 .ptr .global .align 1 k_param_2\n)"
    )
    offsets = sass.parameter_offsets(ptx)
    assert offsets == {0x210: 0, 0x218: 1, 0x220: 2}
    instructions = [
        sass.Instruction(0x00, "", "ULDC.64", "UR4, c[0x0][0x220]", ()),
        sass.Instruction(0x10, "", "ULDC.64", "UR6, c[0x0][0x210]", ()),
        # A value loaded through the first pointer (a label, say) indexes the second one: the
        # access goes through the second pointer, not the first.
        sass.Instruction(0x20, "", "LDG.E", "R0, desc[UR8][UR6.64]", ()),
        sass.Instruction(0x30, "", "IMAD.WIDE", "R2, R0, 0x4, R4", ()),
        sass.Instruction(0x40, "", "MOV", "R4, UR4", ()),
        sass.Instruction(0x50, "", "IADD3", "R2, P0, R0, UR4, RZ", ()),
        sass.Instruction(0x60, "", "IADD3.X", "R3, RZ, UR5, RZ, P0, !PT", ()),
        sass.Instruction(0x70, "", "LDG.E.128", "R8, desc[UR8][R2.64]", ()),
    ]
    assert sass.address_parameters(instructions, 7, offsets) == [2]
    assert instructions[7].access_bits() == 128


def test_spills_are_read_from_the_stack_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    # ptxas spills into the stack frame (its log's "bytes stack frame"); LOCAL counts only
    # local arrays, 0 in these kernels whatever they spill.
    printed = "Function _kernel:\n REG:48 STACK:8 SHARED:1024 LOCAL:0 CONSTANT[0]:664 TEXTURE:0\n"
    monkeypatch.setattr(sass, "_run_on_cubin", lambda tool, options, cubin: printed)
    assert sass.resource_usage(b"") == sass.ResourceUsage(registers=48, local_bytes=8)


def _row(**changes: object) -> dict[str, object]:
    row = {
        "loss": "cross_entropy",
        "dtype": "bf16",
        "target": "index",
        "batch": 65536,
        "classes": 1000,
        "reduction": "mean",
        "sass_per_element": 25.0,
        "spill_bytes": 0,
        "loop_spills": 0,
        "programs_per_sm": 2,
        "wide_share": 0.9,
        "launches": 3,
    }
    return {**row, **changes}


def test_the_budget_verdict_names_each_broken_budget() -> None:
    assert over_budget(_row()) == []
    assert over_budget(_row(spill_bytes=8)) == ["8 bytes of spill frame > 0"]
    problems = over_budget(
        _row(
            sass_per_element=32.0,
            spill_bytes=24,
            loop_spills=2,
            programs_per_sm=1,
            wide_share=0.2,
            launches=4,
        )
    )
    assert len(problems) == 6, problems
    # C = 10 in bf16 (20-byte rows) cannot use 16-byte accesses, and its budget is 45.
    assert over_budget(_row(classes=10, batch=1048576, sass_per_element=44.0, wide_share=0.0)) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests/test_kernels_compile.py's reason")
def test_lossbench_static_writes_its_table_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lossbench.bench.static.offline import OfflineCompileUnavailableError

    arguments = ["static", "--losses", "cross_entropy", "--dtypes", "fp32"]
    arguments += ["--batch-sizes", "64", "--class-counts", "10", "--results-dir", str(tmp_path)]
    try:
        status = cli.main(arguments)
    except OfflineCompileUnavailableError as reason:
        pytest.skip(str(reason))
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "ESTIMATED" in printed
    with open(tmp_path / "static.csv", newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
    assert reader.fieldnames == [*PROVENANCE_COLUMNS, *COLUMNS]
    assert len(rows) == 1 and rows[0]["classes"] == "10" and rows[0]["device"] == "sm90-static"
    assert (tmp_path / "static.png").stat().st_size > 0


def test_every_static_column_is_documented() -> None:
    readme = (Path(__file__).parent.parent / "results" / "README.md").read_text()
    for column in COLUMNS:
        assert f"`{column}`" in readme, f"results/README.md does not document {column}"


def test_summary_puts_the_estimate_beside_a_measured_case(tmp_path: Path) -> None:
    import pandas as pd

    from lossbench.bench.static.beside import estimates_beside_measured

    static = tmp_path / "static.csv"
    static.write_text(
        "loss,dtype,target,batch,classes,reduction,est_copy_fraction,sass_per_element,launches\n"
        "cross_entropy,bf16,index,65536,1000,mean,0.98,25.0,3\n"
        "binary_cross_entropy_with_logits,bf16,uint8,8192,16384,mean,1.0,29.0,3\n"
    )
    measured = {"impl": "triton", "pass": "forward_backward", "of_copy": 0.61}
    wide = pd.DataFrame(
        [
            {**measured, "loss": "cross_entropy", "dtype": "bf16", "batch": 65536, "classes": 1000},
            # The harness's sigmoid targets are in the logits' dtype: the uint8 row is no match.
            {
                **measured,
                "loss": "binary_cross_entropy_with_logits",
                "dtype": "bf16",
                "batch": 8192,
                "classes": 16384,
            },
            {**measured, "impl": "torch", "loss": "cross_entropy", "dtype": "bf16"}
            | {"batch": 65536, "classes": 1000},
        ]
    )
    lines = "\n".join(estimates_beside_measured(wide, static)).splitlines()
    table = [line for line in lines if line.startswith("| cross_entropy")]
    assert table == ["| cross_entropy | bf16 | 65536 x 1000 | 61% | 98% | 25.0 | 3 |"]
    assert not any("binary_cross_entropy" in line for line in lines)
    # No case in common (a CPU run times no fused kernel): no section.
    assert estimates_beside_measured(wide[wide["impl"] == "torch"], static) == []
