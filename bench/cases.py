"""What the harness measures: the losses, the implementations, the presets and the bytes each moves.

A case is one loss x implementation x dtype x batch x classes x pass. Every implementation is a
callable ``(logits, target) -> scalar loss`` with ``reduction="mean"`` and the loss's benchmark
options (``LossSpec.options``), so that all of them compute the same number:

- softmax losses take logits (N, C) and int64 class indices (N,);
- sigmoid losses take logits (N, C) and multi-label 0/1 targets (N, C) in the logits' dtype.

Implementations are imported lazily: a module that is missing or broken makes its cases skip
with the reason (``UnavailableError``), it never stops the other cases.
"""

from __future__ import annotations

import functools
import importlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch.nn import functional

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Family = Literal["softmax", "sigmoid"]

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
PASSES = ("forward", "forward_backward")
IMPLEMENTATIONS = ("torch", "compile", "reference", "triton", "liger")

# Class-index targets are int64, as torch's cross_entropy wants them.
INDEX_BYTES = torch.empty((), dtype=torch.int64).element_size()


@dataclass(frozen=True)
class LossSpec:
    """One loss as the harness runs it: its family and the options every implementation gets."""

    name: str
    family: Family
    options: dict[str, float] = field(default_factory=dict)

    def mean_denominator(self, batch: int, classes: int) -> int:
        """How many terms reduction='mean' averages: rows for softmax, elements for sigmoid."""
        return batch if self.family == "softmax" else batch * classes


# Focal losses use the RetinaNet settings (torchvision's defaults): alpha 0.25, gamma 2.
LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec("cross_entropy", "softmax"),
        LossSpec("softmax_focal_loss", "softmax", {"alpha": 0.25, "gamma": 2.0}),
        LossSpec("binary_cross_entropy_with_logits", "sigmoid"),
        LossSpec("sigmoid_focal_loss", "sigmoid", {"alpha": 0.25, "gamma": 2.0}),
    )
}


@dataclass(frozen=True)
class Case:
    """One measurement: ``loss`` by ``impl`` in ``dtype`` on a (batch, classes) problem."""

    loss: str
    impl: str
    dtype: str
    batch: int
    classes: int
    pass_: str

    @property
    def id(self) -> str:
        return f"{self.loss}-{self.impl}-{self.dtype}-{self.batch}x{self.classes}-{self.pass_}"

    @property
    def spec(self) -> LossSpec:
        return LOSSES[self.loss]

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def elements(self) -> int:
        return self.batch * self.classes


# --- Bytes moved ------------------------------------------------------------------------------


def bytes_moved(loss: str, batch: int, classes: int, dtype: str, pass_: str) -> int:
    """The bytes an ideal implementation moves: each input read once, each output written once.

    forward: read the logits (N*C elements) and the targets (N int64 indices for softmax losses,
    N*C elements in the logits' dtype for sigmoid losses), write the one-element mean loss.
    forward_backward adds writing the logits' gradient (N*C elements); the upstream gradient of
    the scalar loss (one element) is read. Anything an implementation moves beyond this (saved
    softmax, fp32 temporaries, a second pass over the logits) is its own cost, which is what the
    roofline fraction exposes.
    """
    element = DTYPES[dtype].itemsize
    logits = batch * classes * element
    targets = batch * INDEX_BYTES if LOSSES[loss].family == "softmax" else batch * classes * element
    loss_value = element
    moved = logits + targets + loss_value
    if pass_ == "forward_backward":
        moved += batch * classes * element + element
    return moved


# --- Inputs -----------------------------------------------------------------------------------


def make_inputs(
    case: Case, device: torch.device, batch: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh random logits (N, C) in the case's dtype, and targets as the loss family takes them.

    Logits are standard normal, so softmax rows are far from one-hot and no gradient is zero.
    ``batch`` overrides the case's batch (the interpreter checks agreement on fewer rows).
    Logits require a gradient for the forward_backward pass only.
    """
    rows = case.batch if batch is None else batch
    logits = torch.randn(rows, case.classes, device=device, dtype=case.torch_dtype)
    if case.spec.family == "softmax":
        target = torch.randint(0, case.classes, (rows,), device=device)
    else:
        # Drawn in the logits' dtype: an int64 draw would take 8 bytes per label first.
        target = torch.randint(0, 2, (rows, case.classes), device=device, dtype=case.torch_dtype)
    logits.requires_grad_(case.pass_ == "forward_backward")
    return logits, target


# --- Implementations --------------------------------------------------------------------------


class UnavailableError(Exception):
    """An implementation cannot run here; the message says why (shown as the skip reason)."""


@dataclass(frozen=True)
class Implementation:
    """A loss as one implementation computes it.

    ``peer``: someone else's code (torch, torch.compile, Liger-Kernel), the baseline ours is
    measured against. A peer that disagrees with the float64 reference is still timed, and its
    case is reported as an expected failure (xfail) with the errors; ours fails outright and is
    not timed. (torchvision's sigmoid_focal_loss in bf16, for one, has gradients 1.1-1.4e-2 from
    float64, beyond the bf16 tolerance of 1e-2.)
    ``interpreted``: runs in Triton's interpreter, so its time is no kernel speed.
    ``overwrites_logits``: writes its gradient into the logits' storage (Liger does), so the
    harness restores the logits before every call and checks agreement against a saved copy.
    """

    name: str
    function: LossFunction
    peer: bool = False
    interpreted: bool = False
    overwrites_logits: bool = False


def torch_softmax_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float, gamma: float
) -> torch.Tensor:
    """Softmax focal loss in plain eager torch, as a user writes it: torch has no such function.

    -alpha (1 - p_y)^gamma log p_y per row, p = softmax(logits), averaged over the N rows;
    computed in the logits' dtype with log_softmax and gather.
    """
    log_p_y = functional.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    return (-alpha * (1 - log_p_y.exp()) ** gamma * log_p_y).mean()


def _torch_function(spec: LossSpec) -> LossFunction:
    if spec.name == "cross_entropy":
        return functional.cross_entropy
    if spec.name == "softmax_focal_loss":
        return functools.partial(torch_softmax_focal_loss, **spec.options)
    if spec.name == "binary_cross_entropy_with_logits":
        return functional.binary_cross_entropy_with_logits
    from torchvision.ops import sigmoid_focal_loss

    return functools.partial(sigmoid_focal_loss, reduction="mean", **spec.options)


def _import_loss(package: str, spec: LossSpec, reduction: str = "mean") -> LossFunction:
    """``package.<family>.<loss name>`` with ``reduction`` and the spec's options."""
    module_name = f"{package}.{spec.family}"
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        reason = f"{module_name} cannot be imported: {type(error).__name__}: {error}"
        raise UnavailableError(reason) from error
    function = getattr(module, spec.name, None)
    if function is None:
        raise UnavailableError(f"{module_name} has no {spec.name} yet")
    return functools.partial(function, reduction=reduction, **spec.options)


def reference_function(spec: LossSpec, reduction: str) -> LossFunction:
    """The reference/ loss with the spec's options and ``reduction`` (the float64 oracle)."""
    return _import_loss("reference", spec, reduction)


class _Compiled:
    """torch.compile of the torch implementation; a failed compilation becomes ``UnavailableError``.

    dynamic=True: one compilation serves every shape of a loss, dtype and pass, so a sweep of
    dozens of shapes costs a handful of compilations (on the CPU each one runs a C++ compiler for
    seconds). Shape-specialised compilation can be faster at a given shape.
    """

    def __init__(self, function: LossFunction) -> None:
        import torch._dynamo.config

        # Dynamo recompiles per dtype, per pass (requires_grad) and per size regime the backend
        # guards on, and counts against one limit per code object, which every compiled
        # torch function shares (dynamo wraps them in one helper). The sweep needs ~48; past the
        # limit, fail rather than fall back to eager silently.
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, 128)
        config.fail_on_recompile_limit_hit = True
        self.compiled = torch.compile(function, dynamic=True)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        try:
            return self.compiled(logits, target)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            reason = f"torch.compile failed: {type(error).__name__}: {first_line}"
            raise UnavailableError(reason) from error


@functools.cache
def _compiled(loss: str) -> _Compiled:
    # One compiled object per loss for the whole session: dynamo caches per function anyway.
    return _Compiled(_torch_function(LOSSES[loss]))


def load_implementation(loss: str, impl: str) -> Implementation:
    """The implementation ``impl`` of ``loss``, or ``UnavailableError`` saying why it cannot run."""
    spec = LOSSES[loss]
    if impl == "torch":
        return Implementation(impl, _torch_function(spec), peer=True)
    if impl == "compile":
        return Implementation(impl, _compiled(loss), peer=True)
    if impl == "reference":
        return Implementation(impl, _import_loss("reference", spec))
    if impl == "triton":
        # Importing kernels chooses the interpreter when no GPU exists (kernels/__init__.py).
        function = _import_loss("kernels", spec)
        from kernels._common import INTERPRETED

        return Implementation(impl, function, interpreted=INTERPRETED)
    if impl == "liger":
        return Implementation(impl, _liger_function(spec), peer=True, overwrites_logits=True)
    raise ValueError(f"unknown implementation {impl!r}; known: {IMPLEMENTATIONS}")


def _liger_function(spec: LossSpec) -> LossFunction:
    if spec.name != "cross_entropy":
        raise UnavailableError(f"Liger-Kernel has no {spec.name}")
    if not torch.cuda.is_available():
        raise UnavailableError("Liger-Kernel needs a CUDA GPU")
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss
    except ImportError as error:
        reason = f"liger-kernel is not installed ({error}); pip install -e '.[peers]'"
        raise UnavailableError(reason) from error
    return LigerCrossEntropyLoss(reduction="mean")


# --- Presets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A sweep: its shapes per loss family, and how long pytest-benchmark times each case.

    Each case is timed for about ``timing_budget_s`` (rounds = budget / one call's time, kept
    within [min_rounds, max_rounds]); on a GPU triton.testing.do_bench adds ``do_bench_ms``.
    """

    name: str
    dtypes: tuple[str, ...]
    shapes: dict[Family, tuple[tuple[int, int], ...]]
    impls: tuple[str, ...] = IMPLEMENTATIONS
    timing_budget_s: float = 0.1
    min_rounds: int = 3
    max_rounds: int = 200
    do_bench_ms: float = 40.0


def _grid(batches: tuple[int, ...], classes: tuple[int, ...], max_elements: int) -> list:
    return [(n, c) for n, c in itertools.product(batches, classes) if n * c <= max_elements]


# The peer table's shapes (mission-notes.md), measured in the full sweep.
PEER_SHAPES: dict[Family, tuple[tuple[int, int], ...]] = {
    "softmax": ((1048576, 10), (65536, 1000), (8192, 32768), (8192, 131072)),
    "sigmoid": ((8192, 16384), (65536, 80)),
}


def _full_shapes(family: Family) -> tuple[tuple[int, int], ...]:
    # A class sweep at batch 8192, powers of two and the non-powers 10, 80 (COCO), 1000 and 50257
    # (GPT-2's vocabulary); 262144 classes at batch 4096. A batch sweep (1024 to 1M rows) at three
    # class counts fills the heatmap. Capped at 2^30 elements (2 GiB of bf16 logits, 4 GiB of
    # fp32) so that the eager peers' temporaries fit and the sweep stays within its time.
    if family == "softmax":
        sweep_classes = (2, 10, 128, 1000, 4096, 16384, 32768, 50257, 131072)
        heat_classes = (10, 1000, 32768)
    else:
        sweep_classes = (2, 10, 80, 1000, 4096, 16384, 131072)
        heat_classes = (80, 1000, 16384)
    shapes = set(PEER_SHAPES[family])
    shapes.update(_grid((8192,), sweep_classes, 2**30))
    shapes.update(_grid((1024, 65536, 1048576), heat_classes, 2**30))
    shapes.add((4096, 262144))
    return tuple(sorted(shapes, key=lambda shape: (shape[0] * shape[1], shape)))


PRESETS: dict[str, Preset] = {
    # CI runs this with --benchmark-disable: one small shape, every loss, fp32, seconds. compile is
    # left out because each compilation runs a C++ compiler for seconds on the CPU.
    "tiny": Preset(
        "tiny",
        dtypes=("fp32",),
        shapes={"softmax": ((16, 10),), "sigmoid": ((16, 10),)},
        impls=("torch", "reference", "triton", "liger"),
        timing_budget_s=0.01,
        min_rounds=1,
    ),
    # The CPU default: fp32 and bf16, class counts 10, 1000 and 32768 at small batches. Every
    # shape has over 4096 elements, past the size at which inductor's CPU code recompiles, so
    # compile costs 16 compilations (about 10 s each with a cold cache). `pytest bench/
    # --benchmark-only` (with bench_convergence.py) took 3 min 52 s on 2 shared cores with a cold
    # inductor cache, against a budget of 10 minutes.
    "quick": Preset(
        "quick",
        dtypes=("fp32", "bf16"),
        shapes={
            "softmax": ((512, 10), (64, 1000), (512, 1000), (32, 32768)),
            "sigmoid": ((512, 10), (64, 1000), (512, 1000), (32, 32768)),
        },
        timing_budget_s=0.05,
    ),
    # The GPU default. Estimated (not yet measured) on an H200: 17 softmax shapes x (5 + 4)
    # implementations + 16 sigmoid shapes x (4 + 4), x 2 dtypes x 2 passes = 1124 cases (the
    # liger cases of the other three losses skip at once). Below 2^28 elements (816 cases) a case
    # costs ~0.1 s: ~20 ms of pytest-benchmark rounds, ~35 ms of do_bench, the float64 agreement
    # check, one peak-memory call and pytest's own work; from 2^28 to 2^30 elements (308 cases)
    # ~0.35 s: eager peers take 1-50 ms a call (7 calls + do_bench's ~8) and the agreement check
    # reads up to 2^30 elements in float64. 82 s + 108 s, plus ~32 torch.compile compilations at
    # ~4 s on a cold cache: ~320 s. gpu_check.sh adds --max-minutes 4.5 as a guard: cases past
    # it skip with that reason, the biggest shapes last.
    "full": Preset(
        "full",
        dtypes=("bf16", "fp32"),
        shapes={"softmax": _full_shapes("softmax"), "sigmoid": _full_shapes("sigmoid")},
        timing_budget_s=0.02,
        max_rounds=100,
        do_bench_ms=20.0,
    ),
}


def generate_cases(
    preset: Preset,
    losses: tuple[str, ...],
    impls: tuple[str, ...],
    dtypes: tuple[str, ...],
    batches: tuple[int, ...] | None = None,
    classes: tuple[int, ...] | None = None,
) -> list[Case]:
    """Every case of ``preset`` for the chosen losses, implementations and dtypes.

    ``batches`` and ``classes`` replace the preset's shapes by their full grid when given (one of
    them alone keeps the preset's values of the other). Order: the peer table's shapes first,
    then by size, so that a run cut short by --max-minutes loses the biggest shapes; within a
    shape every implementation runs back to back.
    """
    cases = []
    for loss in losses:
        family = LOSSES[loss].family
        shapes = preset.shapes[family]
        if batches or classes:
            shapes = tuple(
                itertools.product(
                    batches or sorted({n for n, _ in shapes}),
                    classes or sorted({c for _, c in shapes}),
                )
            )
        for (batch, n_classes), dtype, pass_, impl in itertools.product(
            shapes, dtypes, PASSES, impls
        ):
            cases.append(Case(loss, impl, dtype, batch, n_classes, pass_))

    def order(case: Case) -> tuple:
        peer = (case.batch, case.classes) in PEER_SHAPES[case.spec.family]
        return (not peer, case.elements, case.batch, case.dtype, case.pass_, case.loss)

    return sorted(cases, key=order)
