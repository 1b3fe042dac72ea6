"""One benchmark case from start to end: ``run_case`` checks, measures and records it.

A case:

1. skips, with the reason, when the session's --max-minutes budget ran out, its implementation
   cannot run here or its memory estimate does not fit (or it runs out of memory after all);
2. runs once on fresh random inputs and compares the loss (and the gradients) with the float64
   reference; a disagreement of ours (reference, triton, triton+compile) FAILS the case, after it
   is recorded, and is not timed; a peer's (torch, compile, liger, ...) is timed as the baseline
   it is and reported as an expected failure (xfail) with its errors. The interpreter checks fewer
   rows, and so does the linear loss where the float64 check would be long (``agreement``); the
   measurements below then run on fresh inputs of the case's full shape;
3. under Triton's interpreter (no GPU) stops there: it skips the timing with that reason, since
   interpreter time is no kernel speed; the linear loss first measures its peak memory, its
   headline, which the interpreter allocates as the GPU would;
4. measures the peak memory of one step beyond the inputs (and for the linear loss beyond the
   inputs and their gradients);
5. is timed by pytest-benchmark (benchmark.pedantic, rounds filling the preset's budget, the
   device synchronised inside each step, the gradients set to None between rounds outside the
   timed region), and on a GPU also by triton.testing.do_bench;
6. is recorded in the CSV and in pytest-benchmark's extra_info, with a progress line.

bench/bench_losses.py is the pytest adapter: it turns the outcome into pass, fail, xfail or skip.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lossbench.bench.agreement import (
    INTERPRETER_ELEMENTS,
    Agreement,
    check_agreement,
    check_linear_agreement,
    linear_agreement_rows,
)
from lossbench.bench.cases import Case, bytes_moved, make_inputs, model_flops
from lossbench.bench.implementations import Implementation, UnavailableError, load_implementation
from lossbench.bench.measure import (
    available_memory,
    do_bench_ms,
    estimated_peak_bytes,
    make_step,
    peak_memory,
    spread,
    time_once,
    timing_rounds,
)
from lossbench.bench.session import BenchSession

# Memory a case may plan to use, as a share of what is available: the rest is the estimate's
# margin of error and the allocator's fragmentation.
MEMORY_HEADROOM = 0.9


@dataclass
class Outcome:
    """What one case measured, and whether it skips, fails, xfails or raised (with the reason)."""

    metrics: list[tuple] = field(default_factory=list)
    skip: str | None = None
    fail: str | None = None
    xfail: str | None = None
    error: str | None = None


def run_case(case: Case, session: BenchSession, benchmark) -> Outcome:
    """Check, measure and record ``case`` with pytest-benchmark's ``benchmark`` fixture.

    Returns what happened; an exception of the implementation itself is recorded as an error
    and raised again, so that it fails with its own traceback.
    """
    if session.deadline_passed():
        outcome = Outcome(skip=f"the --max-minutes {session.max_minutes:g} budget ran out")
    else:
        try:
            outcome = _measure(case, session, benchmark)
        except UnavailableError as error:
            outcome = Outcome(skip=str(error))
        except torch.OutOfMemoryError as error:
            outcome = Outcome(skip=f"out of memory: {str(error).splitlines()[0]}")
        except Exception as error:
            _finish(session, case, benchmark, Outcome(error=repr(error)))
            raise
        # Outside the except blocks no traceback holds the case's tensors any more.
        if session.device.type == "cuda" and outcome.skip:
            torch.cuda.empty_cache()
    _finish(session, case, benchmark, outcome)
    return outcome


def _finish(session: BenchSession, case: Case, benchmark, outcome: Outcome) -> None:
    """Record the case in the CSV and extra_info, and print its progress line."""
    if outcome.skip:
        outcome.metrics.append(("skipped", None, outcome.skip))
    if outcome.error:
        outcome.metrics.append(("error", None, outcome.error))
    session.record(case, outcome.metrics)
    benchmark.extra_info.update({name: value for name, value, *_ in outcome.metrics})
    session.announce(_progress_line(session, case, outcome))


def _agreement_rows(case: Case, implementation: Implementation) -> int:
    """Rows the agreement is checked on: the case's batch, or fewer in the interpreter (the same
    class count) and for long float64 checks of the linear loss."""
    if case.spec.family == "linear":
        return linear_agreement_rows(
            case.batch, case.hidden, case.classes, implementation.interpreted
        )
    if implementation.interpreted:
        return max(1, min(case.batch, INTERPRETER_ELEMENTS // case.classes))
    return case.batch


def _check(
    case: Case,
    inputs: tuple[torch.Tensor, ...],
    saved_logits: torch.Tensor,
    target: torch.Tensor,
    loss: torch.Tensor,
) -> Agreement:
    if case.spec.family == "linear":
        hidden, linear_weight = inputs
        return check_linear_agreement(
            case.torch_dtype, hidden, linear_weight, target, loss, hidden.grad, linear_weight.grad
        )
    return check_agreement(case.spec, case.torch_dtype, saved_logits, target, loss, inputs[0].grad)


def _measure(case: Case, session: BenchSession, benchmark) -> Outcome:
    implementation = load_implementation(case.loss, case.impl)
    device = session.device
    needed = estimated_peak_bytes(case)
    available = available_memory(device)
    if needed > MEMORY_HEADROOM * available:
        return Outcome(
            skip=f"needs about {needed / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available"
        )
    outcome = Outcome()
    linear = case.spec.family == "linear"
    rows = _agreement_rows(case, implementation)
    inputs, target = make_inputs(case, device, rows)
    saved_logits = inputs[0].detach()
    if implementation.overwrites_logits:
        saved_logits = saved_logits.clone()

    # The first call compiles (torch.compile, Triton's JIT) outside any timed region.
    loss = implementation.function(*inputs, target)
    if case.pass_ == "forward_backward":
        loss.backward()
    agreement = _check(case, inputs, saved_logits, target, loss.detach())
    outcome.metrics += [
        ("loss_rel_error", agreement.loss_error),
        ("grad_rel_error", agreement.grad_error),
        ("grad_elementwise_error", agreement.grad_elementwise_error),
        ("tolerance", agreement.tolerance),
        ("agreement", int(agreement.passed)),
        ("agreement_batch", rows),
        ("gradient_rows", agreement.gradient_rows),
    ]
    if linear:
        outcome.metrics.append(("weight_grad_rel_error", agreement.weight_grad_error))
    del loss
    if not agreement.passed:
        disagreement = f"{case.id} disagrees with the float64 reference: {agreement.describe()}"
        if not implementation.peer:
            outcome.fail = disagreement
            return outcome
        outcome.xfail = f"a peer: {disagreement}"
    if implementation.interpreted and not linear:
        # One reason for all (pytest folds equal reasons); the errors are in the CSV and log.
        outcome.skip = (
            "Triton's interpreter (no GPU): agreement checked and recorded; "
            "interpreter time is no kernel speed, so not timed"
        )
        return outcome
    if rows < case.batch:
        del inputs, saved_logits
        inputs, target = make_inputs(case, device)
        saved_logits = inputs[0].detach()
        if implementation.overwrites_logits:
            saved_logits = saved_logits.clone()

    setup = _setup(implementation, inputs, saved_logits)
    step = make_step(implementation, inputs, target, case.pass_)
    setup()
    peak = peak_memory(step, device)
    outcome.metrics.append(("peak_memory", peak))
    if linear:
        gradients = 0
        if case.pass_ == "forward_backward":
            gradients = sum(tensor.numel() * tensor.element_size() for tensor in inputs)
        outcome.metrics.append(("peak_beyond_gradients", peak - gradients))
        work = model_flops(case.batch, case.hidden, case.classes, case.pass_)
        outcome.metrics.append(("flops", work))
    else:
        work = bytes_moved(case.loss, case.batch, case.classes, case.dtype, case.pass_)
        outcome.metrics.append(("bytes", work))
    if implementation.interpreted:
        outcome.skip = (
            "Triton's interpreter (no GPU): agreement and peak memory measured and recorded; "
            "interpreter time is no kernel speed, so not timed"
        )
        return outcome
    if not benchmark.enabled:
        benchmark.pedantic(step, setup=setup, rounds=1)  # --benchmark-disable: runs once.
        return outcome

    # One untimed call sizes the rounds and is their warm-up.
    setup()
    rounds = timing_rounds(session.preset, time_once(step))
    benchmark.pedantic(step, setup=setup, rounds=rounds)
    stats = benchmark.stats.stats
    low, high = spread(stats.data)
    outcome.metrics += [
        ("time_median", stats.median * 1e3),
        ("time_p20", low * 1e3),
        ("time_p80", high * 1e3),
        ("time_iqr", stats.iqr * 1e3),
        ("rounds", stats.rounds),
        *_rates(session, case, work, stats.median, ""),
    ]
    if device.type == "cuda":
        # do_bench runs back to back: Liger's logits then hold the previous call's gradient,
        # which costs it the same work (pytest-benchmark's rounds restore them each time).
        unsynchronized = make_step(implementation, inputs, target, case.pass_, False)
        milliseconds, low, high = do_bench_ms(unsynchronized, inputs, session.preset.do_bench_ms)
        outcome.metrics += [
            ("do_bench_median", milliseconds),
            ("do_bench_p20", low),
            ("do_bench_p80", high),
            *_rates(session, case, work, milliseconds / 1e3, "_do_bench"),
        ]
    return outcome


def _rates(
    session: BenchSession, case: Case, work: int, seconds: float, suffix: str
) -> list[tuple[str, float]]:
    """What ``work`` in ``seconds`` reaches, against what this session measured the device to
    do: GB/s of the copy bandwidth, or for the linear loss TFLOP/s of the matmul throughput in
    the case's dtype. ``suffix`` names the do_bench figures."""
    if case.spec.family == "linear":
        tflops = work / seconds / 1e12
        matmul = session.matmul_tflops(case.torch_dtype)
        rates = [(f"tflops{suffix}", tflops), (f"matmul_fraction{suffix}", tflops / matmul)]
        return rates if suffix else [*rates, ("matmul_tflops", matmul)]
    throughput = work / seconds / 1e9
    copy = session.copy_bandwidth_gbps
    rates = [(f"throughput{suffix}", throughput), (f"copy_fraction{suffix}", throughput / copy)]
    return rates if suffix else [*rates, ("copy_bandwidth", copy)]


def _setup(
    implementation: Implementation,
    inputs: tuple[torch.Tensor, ...],
    saved_logits: torch.Tensor,
):
    """Before each step, outside the timed region: fresh gradients, and the logits restored
    for an implementation that overwrites them."""

    def setup() -> None:
        for tensor in inputs:
            tensor.grad = None
        if implementation.overwrites_logits:
            with torch.no_grad():
                inputs[0].copy_(saved_logits)

    return setup


def _progress_line(session: BenchSession, case: Case, outcome: Outcome) -> str:
    values = {name: value for name, value, *_ in outcome.metrics}
    prefix = f"[{session.done_cases}/{session.total_cases}] {case.id}:"
    if outcome.error:
        return f"{prefix} ERROR {outcome.error}"
    if outcome.fail:
        return f"{prefix} FAIL {outcome.fail}"
    errors = ""
    if "loss_rel_error" in values:
        errors = f"loss err {values['loss_rel_error']:.1g}"
        if values.get("grad_rel_error") is not None:
            errors += f", grad err {values['grad_rel_error']:.1g}"
            errors += f" (elementwise {values['grad_elementwise_error']:.1g} x allowed)"
        errors += f" on {values['agreement_batch']} rows"
    if outcome.skip:
        return f"{prefix} skipped ({outcome.skip})" + (f", agrees ({errors})" if errors else "")
    parts = []
    milliseconds = values.get("do_bench_median", values.get("time_median"))
    if milliseconds is not None and "flops" in values:
        tflops = values.get("tflops_do_bench", values.get("tflops"))
        fraction = values.get("matmul_fraction_do_bench", values.get("matmul_fraction"))
        parts.append(f"{milliseconds:.4g} ms, {tflops:.3g} TFLOP/s, {fraction:.1%} of matmul")
    elif milliseconds is not None:
        fraction = values.get("copy_fraction_do_bench", values.get("copy_fraction"))
        parts.append(f"{milliseconds:.4g} ms, {fraction:.1%} of copy")
    parts.append(f"peak {values['peak_memory'] / 2**20:.1f} MiB")
    if "peak_beyond_gradients" in values:
        parts.append(f"{values['peak_beyond_gradients'] / 2**20:.1f} MiB beyond gradients")
    parts.append(f"XFAIL ({outcome.xfail})" if outcome.xfail else f"agrees ({errors})")
    return f"{prefix} {', '.join(parts)}"
