"""What the harness measures: the losses, the cases, the presets, and the bytes each case moves.

A case is one loss x implementation x dtype x batch x classes x pass (the implementations
themselves are in lossbench.bench.implementations). Inputs per loss family:

- softmax losses take logits (N, C) and int64 class indices (N,);
- sigmoid losses take logits (N, C) and multi-label 0/1 targets (N, C) in the logits' dtype.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Family = Literal["softmax", "sigmoid"]

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
PASSES = ("forward", "forward_backward")
IMPLEMENTATIONS = ("torch", "compile", "reference", "triton", "triton+compile", "liger")

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
    fraction of the copy bandwidth exposes.
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


# The shapes at which the peers (torch eager, torch.compile, Liger-Kernel) are compared, measured
# first in the full sweep. Softmax: a million rows of 10 classes (launch- and instruction-bound),
# ImageNet's 1000 classes, and two language-model vocabularies. Sigmoid: a wide multi-label
# problem, and COCO's 80 classes.
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
    # CI runs this with --benchmark-disable: one small shape, every loss, fp32, seconds. compile and
    # triton+compile are left out because each compilation runs a C++ compiler for seconds on
    # the CPU.
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
        # Five calls at least, so that the 20th and 80th percentiles are not just the extremes.
        min_rounds=5,
    ),
    # The GPU default. Estimated (not yet measured) on an H200, before triton+compile joined:
    # 17 softmax shapes x (5 + 4) implementations + 16 sigmoid shapes x (4 + 4), x 2 dtypes x 2
    # passes = 1124 cases (the liger cases of the other three losses skip at once). Below 2^28
    # elements (816 cases) a case costs ~0.1 s: ~20 ms of pytest-benchmark rounds, ~35 ms of
    # do_bench, the float64 agreement check, one peak-memory call and pytest's own work; from
    # 2^28 to 2^30 elements (308 cases) ~0.35 s: eager peers take 1-50 ms a call (7 calls +
    # do_bench's ~8) and the agreement check reads up to 2^30 elements in float64. 82 s + 108 s,
    # plus ~32 torch.compile compilations at ~4 s on a cold cache: ~320 s. triton+compile adds
    # (17 + 16) shapes x 2 losses x 2 dtypes x 2 passes = 264 cases and its own ~32
    # compilations, by the same rates ~40 s + ~130 s: ~490 s in all, past the guard gpu_check.sh
    # sets (--max-minutes 4.5): cases past it skip with that reason, the biggest shapes last.
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
