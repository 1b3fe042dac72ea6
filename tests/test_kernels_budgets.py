"""The kernels stay within their sm_90 budgets (lossbench.bench.static.analysis.budget), checked
without a GPU by the static analyser (lossbench.bench.static, ``lossbench static``).

tests/test_kernels_compile.py compiles every code path of every kernel for sm_90 and bounds its
spills; this module goes further for the losses of logits: the SASS instructions each element
costs, the programs that share an SM, the width of the logits and gradient accesses, the device
launches of one call, and no host synchronisation. The analyser's subprocess calls the public
functions on CPU tensors and compiles, for sm_90, each launch their launchers make (Triton's own
JIT path, argument specialisation included): what is compiled is exactly what would run. One
subprocess serves the whole module: about 50 compilations, two minutes on two cores.

On a machine with a GPU the other tests compile and run every kernel, so this module skips
there; it also skips when this Triton has no NVIDIA backend or ptxas.
"""

from __future__ import annotations

import pytest
import torch

from lossbench.bench.static.analysis import analyse, over_budget
from lossbench.bench.static.cases import StaticCase, default_cases
from lossbench.bench.static.offline import OfflineCompileUnavailableError, compile_cases

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="a CUDA GPU is present: the other kernel tests compile there"
)

# Each path of the losses of logits once, with the heaviest options where registers are tight:
# 1024 x 10 holds rows per thread; 64 x 1000 tiles rows over a warp; 16384 classes is the longest
# row held in registers (64 values per thread) and 32000 (a language model's vocabulary) runs the
# chunked online softmax, both with every option; (2, 19, 8, 8) is (N, C, H, W) with 19
# Cityscapes classes; an upstream gradient other than 1 (a loss scale) runs the backward launch
# that recomputes the gradient; the sigmoid losses take a (C,) weight read by index arithmetic,
# a full-shape pos_weight, a target that requires grad, and a fractional gamma; the
# vocabulary-parallel losses (kernels/vocab_parallel.py) a slice held in registers and a chunked
# one. 'none' runs its backward launch too.
_EVERY_OPTION = (("weight", True), ("label_smoothing", 0.1), ("z_loss_scale", 1e-4))
PATH_CASES = (
    StaticCase("cross_entropy", "bf16", 1024, 10, options=(("ignore_index", 3),)),
    StaticCase("cross_entropy", "bf16", 64, 1000, reduction="none", options=_EVERY_OPTION),
    StaticCase("cross_entropy", "bf16", 4, 16384, reduction="sum", options=_EVERY_OPTION),
    StaticCase("cross_entropy", "fp32", 4, 16384, reduction="none", options=_EVERY_OPTION),
    StaticCase("softmax_focal_loss", "fp32", 4, 16384, options=(("weight", True),)),
    StaticCase("cross_entropy", "bf16", 2, 32000, options=_EVERY_OPTION),
    StaticCase("softmax_focal_loss", "bf16", 2, 32000, reduction="none"),
    StaticCase("cross_entropy", "fp32", 2, 19, reduction="none", spatial=(8, 8)),
    StaticCase("cross_entropy", "bf16", 65536, 1000, options=(("upstream", 2.0),)),
    StaticCase(
        "binary_cross_entropy_with_logits",
        "bf16",
        64,
        80,
        target="bool",
        options=(("weight", True), ("pos_weight", True)),
    ),
    StaticCase(
        "sigmoid_focal_loss",
        "fp32",
        64,
        80,
        target="fp32",
        reduction="none",
        options=(("target_grad", True),),
    ),
    StaticCase(
        "sigmoid_focal_loss",
        "bf16",
        64,
        80,
        target="uint8",
        options=(("gamma", 1.5), ("upstream", 2.0)),
    ),
    StaticCase(
        "cross_entropy",
        "bf16",
        16,
        16384,
        options=(("vocab_parallel", True), *_EVERY_OPTION),
    ),
    StaticCase(
        "softmax_focal_loss",
        "bf16",
        16,
        32000,
        reduction="none",
        options=(("vocab_parallel", True), ("weight", True)),
    ),
)
# The budgets are checked on the analyser's default cases: the full preset's peer shapes (and
# 8192 x 16384), fp32 and bf16, uint8 and the logits' dtype as sigmoid targets.
BUDGET_CASES = tuple(default_cases())


@pytest.fixture(scope="module")
def records() -> dict[StaticCase, dict]:
    """What the analyser's subprocess reported, by case."""
    cases = [*PATH_CASES, *BUDGET_CASES]
    try:
        reports = compile_cases(cases)
    except OfflineCompileUnavailableError as reason:
        pytest.skip(str(reason))
    return {StaticCase.from_dict(report["case"]): report for report in reports}


def test_every_path_runs_without_host_sync_or_loop_spills(records: dict) -> None:
    for case in PATH_CASES:
        report = records[case]
        assert "error" not in report, f"{case.label}: {report.get('error')}"
        assert report["host_syncs"] == [], f"{case.label} synchronises: {report['host_syncs']}"
        for facts in report["kernels"]:
            assert facts["loop_spills"] == 0, f"{case.label}: {facts['kernel']} spills in a loop"
        # The occupancy budget is the single-device kernels'; the vocabulary-parallel
        # ones keep their own shapes (32 warps at 16384 classes: one program, half the SM).
        if ("vocab_parallel", True) not in case.options:
            programs = analyse(report)["programs_per_sm"]
            assert programs >= 2, f"{case.label}: {programs} program per SM"


def test_kernels_stay_within_their_budgets(records: dict) -> None:
    """SASS instructions per element, no spill in a loop, >= 2 programs per SM, 16-byte accesses
    where the row stride allows, <= 3 device launches for a 'mean' forward+backward with
    upstream 1."""
    broken = []
    for case in BUDGET_CASES:
        report = records[case]
        assert "error" not in report, f"{case.label}: {report.get('error')}"
        if problems := over_budget(analyse(report)):
            broken.append(f"{case.label}: {'; '.join(problems)}")
    assert not broken, "over budget:\n" + "\n".join(broken)


@pytest.mark.parametrize(
    ("case", "kernel"),
    [
        (StaticCase("cross_entropy", "bf16", 65536, 1000), "_softmax_loss_kernel"),
        (
            StaticCase("binary_cross_entropy_with_logits", "bf16", 65536, 80, target="bf16"),
            "_sigmoid_loss_kernel",
        ),
    ],
)
def test_one_launch_per_forward_and_one_per_backward(
    records: dict, case: StaticCase, kernel: str
) -> None:
    # 'mean' sums its denominator and its loss, and writes the gradient, inside the forward's
    # one launch; loss.backward() adds autograd's ones_like and the kernel again, whose programs
    # leave at once when the upstream gradient is 1 (it is on the device: reading it on the host
    # would synchronise).
    assert records[case]["launches"] == [
        f"triton {kernel}",
        "torch aten.ones_like.default",
        f"triton {kernel}",
    ]
    upstream_two = records[PATH_CASES[8]]["launches"]
    assert upstream_two == ["triton _softmax_loss_kernel", "triton _softmax_loss_kernel"]
