"""PyTorch's own sample inputs for its losses, through our kernels and reference, against torch.

``torch.testing._internal.common_methods_invocations.op_db`` holds an OpInfo for each torch
function, with the sample inputs torch's own test suite runs it on. Every sample of
``nn.functional.cross_entropy`` and ``nn.functional.binary_cross_entropy_with_logits``, in fp32,
fp16, bf16 and fp64, goes through ``kernels.<name>`` and ``reference.<name>``: the loss, the input
gradient and (where the sample's target requires grad) the target gradient are compared by
``assert_close`` for the sample's dtype with torch's on the same sample upcast to float64, and the
loss's dtype with torch's in the sample's dtype. A sample torch rejects is not run.

Each run either agrees or matches one entry of ``DIFFERENCES``, the one list of where we
knowingly differ from torch on these samples, and why. The test fails on a disagreement that is
not listed, on a listed difference that agrees after all or differs in another way than listed
(so the list stays true), and on an entry that matches no sample.

op_db is imported in a subprocess: importing it runs ``torch.backends.disable_global_flags()``
(after which setting a ``torch.backends`` flag raises, as the convergence run does) and loads a
hypothesis profile, for the rest of the process. The subprocess draws the samples from a seed the
test passes it (so a run replays with LOSSBENCH_SEED) and hands them over through torch.save.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (torch's own spelling)
from torch import Tensor

import lossbench.kernels as kernels
import lossbench.reference as reference
from lossbench.kernels._common import KERNEL_DEVICE
from lossbench.reference.tolerance import assert_close

from .helpers import REPOSITORY_ROOT, loss_and_gradients, upcast, upstream_gradient

# The interpreter evaluates masked lanes too (-inf logits), and numpy warns about the nan there.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

# OpInfo name -> the function of torch.nn.functional, kernels and reference of the same name.
OPS = {
    "nn.functional.cross_entropy": "cross_entropy",
    "nn.functional.binary_cross_entropy_with_logits": "binary_cross_entropy_with_logits",
}
IMPLEMENTATIONS: dict[str, object] = {"kernels": kernels, "reference": reference}
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass(frozen=True)
class Sample:
    """One OpInfo sample: ``function(input, *args, **kwargs)``; ``index`` counts within its op
    and dtype, in op_db's order."""

    op: str
    dtype: torch.dtype
    index: int
    input: Tensor
    args: tuple
    kwargs: dict
    target_requires_grad: bool

    def describe(self) -> str:
        def text(value: object) -> str:
            if isinstance(value, Tensor):
                return f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
            return repr(value)

        arguments = [f"input {text(self.input)}", *(f"target {text(a)}" for a in self.args)]
        arguments += [f"{name}={text(value)}" for name, value in self.kwargs.items()]
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{self.op} {dtype} sample {self.index} ({', '.join(arguments)})"


@dataclass(frozen=True)
class Difference:
    """Where ours knowingly differs from torch on OpInfo samples, and why.

    Matches the runs of ``implementation`` on the samples of ``ops`` in ``dtypes`` for which
    ``when`` holds (every one when None). ``raises``: the exception those runs raise, or None
    when they run and disagree. ``until``: what will remove the entry, where that is known.
    """

    implementation: str
    ops: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    raises: type[Exception] | None
    reason: str
    when: Callable[[Sample], bool] | None = None
    until: str = ""

    def matches(self, implementation: str, sample: Sample) -> bool:
        return (
            implementation == self.implementation
            and OPS[sample.op] in self.ops
            and sample.dtype in self.dtypes
            and (self.when is None or self.when(sample))
        )


def _class_indices(sample: Sample) -> bool:
    """A cross-entropy sample whose target holds class indices (not probabilities)."""
    return not sample.args[0].is_floating_point()


# Every known difference between ours and torch on torch's own samples. None is left: the last
# two (the kernels raised for float64 inputs) closed when the kernels learnt to compute in float64.
DIFFERENCES: list[Difference] = []


# --- The samples, drawn in a subprocess -----------------------------------------------------------


def _draw_samples(path: str, seed: int) -> None:
    """In the subprocess: op_db's samples of OPS in DTYPES on the CPU, saved to ``path``."""
    from torch.testing._internal.common_methods_invocations import op_db

    torch.manual_seed(seed)
    records = []
    for op in (op for op in op_db if op.name in OPS):
        for dtype in DTYPES:
            for sample in op.sample_inputs("cpu", dtype, requires_grad=True):
                target = sample.args[0]
                records.append(
                    {
                        "op": op.name,
                        "dtype": str(dtype).removeprefix("torch."),
                        "input": sample.input.detach(),
                        "args": [arg.detach() for arg in sample.args],
                        "kwargs": {
                            name: value.detach() if isinstance(value, Tensor) else value
                            for name, value in sample.kwargs.items()
                        },
                        "target_requires_grad": target.requires_grad,
                    }
                )
    torch.save(records, path)


def load_samples(tmp_path: Path, seed: int) -> list[Sample]:
    """op_db's samples, drawn by a subprocess from ``seed``, on the kernels' device."""
    if importlib.util.find_spec("expecttest") is None:
        pytest.fail(
            "torch.testing._internal needs the package expecttest: pip install -e '.[test]'"
        )
    path = tmp_path / "samples.pt"
    completed = subprocess.run(
        [sys.executable, "-m", "tests.test_opinfo_samples", str(path), str(seed)],
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert completed.returncode == 0, f"drawing op_db's samples failed:\n{completed.stderr}"
    samples = []
    counts: dict[tuple[str, str], int] = {}
    for record in torch.load(path, weights_only=True):
        key = (record["op"], record["dtype"])
        counts[key] = counts.get(key, -1) + 1

        def to_device(value: object) -> object:
            return value.to(KERNEL_DEVICE) if isinstance(value, Tensor) else value

        samples.append(
            Sample(
                op=record["op"],
                dtype=getattr(torch, record["dtype"]),
                index=counts[key],
                input=to_device(record["input"]),
                args=tuple(to_device(arg) for arg in record["args"]),
                kwargs={name: to_device(value) for name, value in record["kwargs"].items()},
                target_requires_grad=record["target_requires_grad"],
            )
        )
    return samples


# --- One run: ours against torch --------------------------------------------------------------


def run_against_torch(function: Callable[..., Tensor], sample: Sample) -> str | None:
    """None when ``function`` agrees with torch on ``sample``; else what differs (an exception
    ``function`` raised: 'raises <type>: <message>'; a comparison: 'disagrees: <message>').

    Raises ``LookupError`` when torch itself rejects the sample.
    """
    torch_function = getattr(F, OPS[sample.op])
    (target,) = sample.args
    try:
        torch_loss = torch_function(sample.input, target, **sample.kwargs)
    except Exception as error:  # torch's own verdict on its sample: not ours to run
        raise LookupError(f"torch rejects {sample.describe()}: {error}") from error
    upstream = upstream_gradient(torch_loss)
    target_grad = sample.target_requires_grad
    expected, expected_grad, expected_target_grad, _ = loss_and_gradients(
        torch_function,
        sample.input.double(),
        target.double() if target.is_floating_point() else target,
        upstream.double(),
        target_grad=target_grad,
        **upcast(sample.kwargs),
    )
    try:
        loss, grad, target_grad_value, _ = loss_and_gradients(
            function, sample.input, target, upstream, target_grad=target_grad, **sample.kwargs
        )
    except Exception as error:
        return f"raises {type(error).__name__}: {error}"
    try:
        assert loss.dtype == torch_loss.dtype, (
            f"loss dtype {loss.dtype}, torch's {torch_loss.dtype}"
        )
        assert_close(loss, expected, sample.dtype, "loss")
        assert_close(grad, expected_grad, sample.dtype, "input gradient")
        if target_grad:
            assert_close(target_grad_value, expected_target_grad, sample.dtype, "target gradient")
    except AssertionError as error:
        return f"disagrees: {error}"
    return None


def verdict(implementation: str, sample: Sample, outcome: str | None) -> tuple[str | None, int]:
    """What is wrong with ``outcome`` (``run_against_torch``'s) by DIFFERENCES, or None; and the
    index of the entry that lists the run (-1: none)."""
    where = f"{implementation}: {sample.describe()}"
    listed = [i for i, entry in enumerate(DIFFERENCES) if entry.matches(implementation, sample)]
    if len(listed) > 1:
        return f"{where} matches several DIFFERENCES entries: {listed}", listed[0]
    if not listed:
        return (None if outcome is None else f"{where} {outcome} (not in DIFFERENCES)"), -1
    entry = DIFFERENCES[listed[0]]
    if entry.raises is None:
        expected, prefix = "a disagreement", "disagrees: "
    else:
        expected, prefix = f"{entry.raises.__name__}", f"raises {entry.raises.__name__}: "
    if outcome is None:
        return f"{where} agrees, but DIFFERENCES lists {expected}: remove or narrow it", listed[0]
    if not outcome.startswith(prefix):
        return f"{where} {outcome}, but DIFFERENCES lists {expected}", listed[0]
    return None, listed[0]


def test_opinfo_samples_agree_with_torch_or_are_listed(tmp_path: Path) -> None:
    samples = load_samples(tmp_path, seed=int(torch.randint(2**31, ())))
    assert {sample.op for sample in samples} == set(OPS), "op_db lacks one of the OpInfos"
    assert {sample.dtype for sample in samples} == set(DTYPES)
    problems = []
    matched = set()
    runs = 0
    for sample in samples:
        for implementation, module in IMPLEMENTATIONS.items():
            try:
                outcome = run_against_torch(getattr(module, OPS[sample.op]), sample)
            except LookupError:
                continue
            runs += 1
            problem, entry = verdict(implementation, sample, outcome)
            matched.add(entry)
            if problem is not None:
                problems.append(problem)
    problems += [
        f"DIFFERENCES entry matches no sample: {entry}"
        for index, entry in enumerate(DIFFERENCES)
        if index not in matched
    ]
    assert runs > 0
    assert not problems, f"{len(problems)} of {runs} runs:\n" + "\n".join(problems)


# --- The checks themselves can fail -------------------------------------------------------------


def _index_sample(dtype: torch.dtype = torch.float32) -> Sample:
    return Sample(
        op="nn.functional.cross_entropy",
        dtype=dtype,
        index=0,
        input=torch.randn(4, 5, device=KERNEL_DEVICE).to(dtype).requires_grad_(),
        args=(torch.randint(0, 5, (4,), device=KERNEL_DEVICE),),
        kwargs={"reduction": "sum"},
        target_requires_grad=False,
    )


def test_run_against_torch_reports_what_differs() -> None:
    sample = _index_sample()
    assert run_against_torch(reference.cross_entropy, sample) is None
    off_by_one_percent = run_against_torch(lambda *a, **k: 1.01 * F.cross_entropy(*a, **k), sample)
    assert off_by_one_percent.startswith("disagrees: loss: relative error")
    wrong_dtype = run_against_torch(lambda *a, **k: F.cross_entropy(*a, **k).double(), sample)
    assert wrong_dtype.startswith("disagrees: loss dtype torch.float64")

    def rejects(*args: object, **kwargs: object) -> Tensor:
        raise TypeError("not this dtype")

    assert run_against_torch(rejects, sample) == "raises TypeError: not this dtype"


def test_verdict_fails_unlisted_differences_and_stale_entries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listed = Difference("kernels", ("cross_entropy",), (torch.float64,), TypeError, "a reason")
    monkeypatch.setattr(sys.modules[__name__], "DIFFERENCES", [listed])
    fp32, fp64 = _index_sample(), _index_sample(torch.float64)
    assert verdict("kernels", fp32, None) == (None, -1)
    assert verdict("reference", fp64, None) == (None, -1)
    problem, _ = verdict("kernels", fp32, "disagrees: loss: relative error 0.01")
    assert problem.endswith("(not in DIFFERENCES)")
    # The listed runs: the listed TypeError passes; agreeing, or differing otherwise, fails.
    assert verdict("kernels", fp64, "raises TypeError: float64") == (None, 0)
    assert "agrees, but DIFFERENCES lists TypeError" in verdict("kernels", fp64, None)[0]
    assert "but DIFFERENCES lists TypeError" in verdict("kernels", fp64, "raises ValueError: x")[0]
    assert "but DIFFERENCES lists TypeError" in verdict("kernels", fp64, "disagrees: loss")[0]


if __name__ == "__main__":
    _draw_samples(sys.argv[1], int(sys.argv[2]))
