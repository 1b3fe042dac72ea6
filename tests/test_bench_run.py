"""One case end to end (lossbench.bench.run), agreement (.agreement) and memory (.measure).

Fast and CPU-only: no test here times anything or asserts on a timing.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional

from lossbench.bench import agreement, measure, run
from lossbench.bench.cases import LOSSES, PRESETS, Case
from lossbench.bench.implementations import Implementation
from lossbench.reference.tolerance import tolerance

# --- Agreement --------------------------------------------------------------------------------


def _loss_and_grad(function, logits: torch.Tensor, target: torch.Tensor):
    logits = logits.detach().requires_grad_()
    loss = function(logits, target)
    loss.backward()
    return logits, loss.detach(), logits.grad


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "chunked-and-sampled"])
def test_agreement_passes_torch_and_catches_a_wrong_gradient(
    chunked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if chunked:  # Force the bounded-memory path: several chunks, a sample of gradient rows.
        monkeypatch.setattr(agreement, "CHECK_CHUNK_ELEMENTS", 64)
        monkeypatch.setattr(agreement, "GRADIENT_CHECK_ELEMENTS", 96)
    spec = LOSSES["cross_entropy"]
    logits = torch.randn(40, 7)
    target = torch.randint(0, 7, (40,))
    logits, loss, grad = _loss_and_grad(functional.cross_entropy, logits, target)
    right = agreement.check_agreement(spec, torch.float32, logits, target, loss, grad)
    assert right.passed and right.gradient_rows == (13 if chunked else 40)

    def wrong_gradient(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # The right value, but the gradient of the last row is doubled (a row-offset bug).
        doubled = torch.ones_like(x)
        doubled[-1] = 2
        scaled = x * doubled
        return functional.cross_entropy(x.detach() + (scaled - scaled.detach()), y)

    logits, loss, grad = _loss_and_grad(wrong_gradient, logits, target)
    wrong = agreement.check_agreement(spec, torch.float32, logits, target, loss, grad)
    assert wrong.loss_error <= tolerance(torch.float32)
    assert not wrong.passed and wrong.grad_error > 0.01


def test_agreement_catches_a_wrong_small_gradient_entry_in_bf16() -> None:
    """A gradient right but for one off-target entry 100x below its row's largest, doubled: the
    normwise errors pass the bf16 tolerance, the elementwise check fails the case."""
    spec = LOSSES["cross_entropy"]
    logits = torch.randn(40, 7).to(torch.bfloat16)
    target = torch.randint(0, 7, (40,))
    # Row 0: p = 0.5 at its target, 0.0049 at class 2, ~0 elsewhere.
    logits[0] = torch.tensor([0.5, 0.4951, 0.0049, *[1e-13] * 4]).log()
    target[0] = 0
    logits, loss, grad = _loss_and_grad(functional.cross_entropy, logits.double(), target)
    assert grad[0, 2].item() == pytest.approx(-grad[0, 0].item() / 100, rel=0.05)
    wrong = grad.clone()
    wrong[0, 2] *= 2
    checked = agreement.check_agreement(
        spec, torch.bfloat16, logits, target, loss.bfloat16(), wrong.bfloat16()
    )
    assert checked.loss_error <= tolerance(torch.bfloat16)
    assert checked.grad_error <= tolerance(torch.bfloat16)
    assert checked.grad_elementwise_error > 1 and not checked.passed
    assert "elementwise" in checked.describe()
    right = agreement.check_agreement(
        spec, torch.bfloat16, logits, target, loss.bfloat16(), grad.bfloat16()
    )
    assert right.passed and right.grad_elementwise_error <= 1


class _FakeBenchmark:
    """Stands in for pytest-benchmark's fixture: a case that disagrees must never be timed."""

    enabled = True

    def pedantic(self, *args, **kwargs):
        raise AssertionError("a disagreeing case was timed")


class _FakeSession:
    device = torch.device("cpu")
    preset = PRESETS["tiny"]


def test_a_wrong_implementation_fails_its_case_before_timing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def off_by_one_percent(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 1.01 * functional.binary_cross_entropy_with_logits(x, y)

    wrong = Implementation("wrong", off_by_one_percent)
    monkeypatch.setattr(run, "load_implementation", lambda loss, impl: wrong)
    case = Case("binary_cross_entropy_with_logits", "wrong", "fp32", 16, 10, "forward_backward")
    outcome = run._measure(case, _FakeSession(), _FakeBenchmark())
    metrics = {name: value for name, value, *_ in outcome.metrics}
    assert outcome.fail and "disagrees with the float64 reference" in outcome.fail
    assert metrics["agreement"] == 0 and metrics["loss_rel_error"] == pytest.approx(0.01, rel=1e-3)


class _RecordingBenchmark:
    """Stands in for pytest-benchmark's fixture with --benchmark-disable: counts the calls."""

    enabled = False

    def __init__(self) -> None:
        self.calls = 0

    def pedantic(self, target, setup, rounds: int) -> None:
        setup()
        target()
        self.calls += 1


def test_a_disagreeing_peer_is_timed_and_reported_as_expected_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def off_by_one_percent(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 1.01 * functional.cross_entropy(x, y)

    peer = Implementation("torch", off_by_one_percent, peer=True)
    monkeypatch.setattr(run, "load_implementation", lambda loss, impl: peer)
    case = Case("cross_entropy", "torch", "fp32", 16, 10, "forward")
    benchmark = _RecordingBenchmark()
    outcome = run._measure(case, _FakeSession(), benchmark)
    assert outcome.fail is None and "disagrees" in outcome.xfail
    assert benchmark.calls == 1
    assert {name for name, *_ in outcome.metrics} >= {"agreement", "peak_memory", "bytes"}


# --- Peak memory on the CPU -------------------------------------------------------------------


def test_a_linear_case_records_memory_beyond_gradients_and_flops() -> None:
    # torch eager at N 64 x D 16 x V 300: the peak holds the fp32 logits (77 KB) and more.
    case = Case("linear_cross_entropy", "torch", "fp32", 64, 300, "forward_backward", 16)
    benchmark = _RecordingBenchmark()
    outcome = run._measure(case, _FakeSession(), benchmark)
    metrics = {name: value for name, value, *_ in outcome.metrics}
    assert outcome.fail is None and outcome.xfail is None and benchmark.calls == 1
    assert metrics["agreement"] == 1 and metrics["weight_grad_rel_error"] <= 1e-5
    gradients = (64 + 300) * 16 * 4
    assert metrics["peak_beyond_gradients"] == metrics["peak_memory"] - gradients
    assert metrics["peak_beyond_gradients"] >= 64 * 300 * 4
    assert metrics["flops"] == 6 * 64 * 16 * 300 and "bytes" not in metrics


def test_linear_agreement_catches_a_wrong_weight_gradient() -> None:
    hidden = torch.randn(20, 6, requires_grad=True)
    linear_weight = torch.randn(9, 6, requires_grad=True)
    target = torch.randint(0, 9, (20,))
    loss = functional.cross_entropy(hidden @ linear_weight.t(), target)
    loss.backward()
    args = (torch.float32, hidden, linear_weight, target, loss.detach())
    right = agreement.check_linear_agreement(*args, hidden.grad, linear_weight.grad)
    assert right.passed and right.gradient_rows == 20
    wrong_weight = linear_weight.grad.clone()
    wrong_weight[-1] *= 1.01  # the last class's gradient row: a class-offset bug
    wrong = agreement.check_linear_agreement(*args, hidden.grad, wrong_weight)
    assert not wrong.passed and wrong.grad_error <= 1e-5 and wrong.weight_grad_error > 1e-3
    assert "weight gradient error" in wrong.describe()


def test_linear_agreement_rows_bound_the_float64_check() -> None:
    assert agreement.linear_agreement_rows(8192, 2304, 256000, interpreted=False) == 116
    assert agreement.linear_agreement_rows(64, 32, 1024, interpreted=False) == 64
    assert agreement.linear_agreement_rows(1024, 32, 4096, interpreted=True) == 8


def test_cpu_peak_memory_sees_a_known_allocation_and_not_the_inputs() -> None:
    mebibytes_32 = 8 * 2**20  # float32 elements in 32 MiB
    inputs = torch.ones(2 * mebibytes_32)  # 64 MiB allocated before: must not count

    def step() -> None:
        first = torch.ones(mebibytes_32)
        second = first * 2  # both alive: 64 MiB
        del first, second
        third = torch.ones(mebibytes_32 // 2)  # 16 MiB after the frees: below the peak
        del third
        inputs.mul_(1)

    peak = measure.cpu_allocation_peak(step)
    assert 64 * 2**20 <= peak < 65 * 2**20


def test_cpu_peak_memory_ignores_frees_of_blocks_from_an_earlier_step() -> None:
    # The profiler reports the free of a block it saw allocated in an earlier profiled step (as
    # Triton's interpreter's retained launch arguments are freed by the next launch): counting it
    # would take 4 MiB off a step that allocates 1 MiB, and report a peak of 0.
    held = [torch.empty(0)]
    measure.cpu_allocation_peak(lambda: held.append(torch.ones(2**20)))

    def step() -> None:
        held.clear()
        torch.ones(2**18)

    assert 2**20 <= measure.cpu_allocation_peak(step) < 2**20 + 4096


def test_gradient_rows_sample_includes_the_last_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agreement, "GRADIENT_CHECK_ELEMENTS", 100)
    rows = agreement.gradient_rows(1000, 10, torch.device("cpu"))
    assert len(rows) == 10 and rows[-1] == 999
    assert torch.equal(rows, rows.sort().values) and len(rows.unique()) == 10
    assert agreement.gradient_rows(5, 10, torch.device("cpu")).tolist() == [0, 1, 2, 3, 4]
