"""What the harness measures: the losses, the cases, the presets, and the work each case does.

A case is one loss x implementation x dtype x shape x pass (the implementations themselves are
in lossbench.bench.implementations); the shape is batch N x classes C, and for the linear loss
tokens N x hidden D x vocabulary V (``batch``, ``hidden``, ``classes``). Inputs per loss family:

- softmax losses take logits (N, C) and int64 class indices (N,);
- sigmoid losses take logits (N, C) and multi-label 0/1 targets (N, C) in the logits' dtype;
- the linear loss takes hidden states (N, D), the classifier (V, D) and int64 indices (N,): the
  logits are its business (``linear_cross_entropy``).
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

# (logits, target) -> loss; the linear loss takes (hidden, linear_weight, target).
LossFunction = Callable[..., torch.Tensor]
Family = Literal["softmax", "sigmoid", "linear"]

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
PASSES = ("forward", "forward_backward")
IMPLEMENTATIONS = (
    "torch",
    "compile",
    "torch-chunked",
    "reference",
    "triton",
    "triton+compile",
    "liger",
    "cce",
    "cce-filter",
)
# The implementations each family runs (a case is generated only for these): torch's chunked
# linear cross-entropy and Cut Cross-Entropy exist for the linear loss alone.
FAMILY_IMPLEMENTATIONS: dict[str, tuple[str, ...]] = {
    "softmax": ("torch", "compile", "reference", "triton", "triton+compile", "liger"),
    "sigmoid": ("torch", "compile", "reference", "triton", "triton+compile", "liger"),
    "linear": IMPLEMENTATIONS,
}

# Class-index targets are int64, as torch's cross_entropy wants them.
INDEX_BYTES = torch.empty((), dtype=torch.int64).element_size()


@dataclass(frozen=True)
class LossSpec:
    """One loss as the harness runs it: its family and the options every implementation gets."""

    name: str
    family: Family
    options: dict[str, float] = field(default_factory=dict)

    def mean_denominator(self, batch: int, classes: int) -> int:
        """How many terms reduction='mean' averages: rows for softmax (and linear), elements for
        sigmoid."""
        return batch * classes if self.family == "sigmoid" else batch


# Focal losses use the RetinaNet settings (torchvision's defaults): alpha 0.25, gamma 2.
LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec("cross_entropy", "softmax"),
        LossSpec("softmax_focal_loss", "softmax", {"alpha": 0.25, "gamma": 2.0}),
        LossSpec("binary_cross_entropy_with_logits", "sigmoid"),
        LossSpec("sigmoid_focal_loss", "sigmoid", {"alpha": 0.25, "gamma": 2.0}),
        LossSpec("linear_cross_entropy", "linear"),
    )
}
# The one loss of the linear family: a classifier layer fused with the cross-entropy.
LINEAR_LOSS = "linear_cross_entropy"


@dataclass(frozen=True)
class Case:
    """One measurement: ``loss`` by ``impl`` in ``dtype`` on a (batch, classes) problem, or
    (batch, hidden, classes) for the linear loss; ``hidden`` is 0 for the losses of logits."""

    loss: str
    impl: str
    dtype: str
    batch: int
    classes: int
    pass_: str
    hidden: int = 0

    @property
    def id(self) -> str:
        shape = f"{self.batch}x{self.classes}"
        if self.hidden:
            shape = f"{self.batch}x{self.hidden}x{self.classes}"
        return f"{self.loss}-{self.impl}-{self.dtype}-{shape}-{self.pass_}"

    @property
    def spec(self) -> LossSpec:
        return LOSSES[self.loss]

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def shape(self) -> tuple[int, ...]:
        """(batch, classes), or (batch, hidden, classes) for the linear loss, as PEER_SHAPES."""
        if self.hidden:
            return (self.batch, self.hidden, self.classes)
        return (self.batch, self.classes)

    @property
    def elements(self) -> int:
        """Logits of the case: N x C (materialised or not)."""
        return self.batch * self.classes


# --- Work: bytes moved, flops -----------------------------------------------------------------


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


def model_flops(batch: int, hidden: int, classes: int, pass_: str) -> int:
    """The multiply-add work of the linear loss, counted alike for every implementation.

    forward: the logits, 2 N D V flops; forward_backward adds d input = dz W and d W = dz^T x,
    2 N D V each: 6 N D V (model flops, as MFU counts them; the softmax over N x V is O(N V),
    negligible against D). An implementation that recomputes the logits in backward executes
    more: Cut Cross-Entropy 8 N D V; kernels/linear.py 16 N D V in bf16, 12 in fp16 and 8 in fp32,
    since its exact backward products take dz as 3, 2 or 1 16-bit terms (``GRAD_SPLITS``).
    """
    logits = 2 * batch * hidden * classes
    return logits if pass_ == "forward" else 3 * logits


# --- Inputs -----------------------------------------------------------------------------------


def make_inputs(
    case: Case, device: torch.device, batch: int | None = None
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Fresh random differentiable inputs in the case's dtype, and targets as the loss takes them.

    Losses of logits: ``((logits,), target)``, logits (N, C) standard normal, so softmax rows
    are far from one-hot and no gradient is zero. The linear loss: ``((hidden, linear_weight),
    target)``, hidden (N, D) standard normal and linear_weight (V, D) with entries of standard
    deviation 1 / sqrt(D), so that the logits are standard normal too, as at a language model's
    initialisation. ``batch`` overrides the case's batch (agreement is checked on fewer rows in
    the interpreter, and for the linear loss wherever the float64 check would be too long).
    The inputs require a gradient for the forward_backward pass only.

    The draw is seeded by the loss, dtype, shape and rows: every implementation and pass of a
    case gets the same inputs, in every run, so that agreement errors and verdicts repeat.
    """
    rows = case.batch if batch is None else batch
    dtype = case.torch_dtype
    seed = zlib.crc32(f"{case.loss}-{case.dtype}-{case.shape}-{rows}".encode())
    draw = {"device": device, "generator": torch.Generator(device=device).manual_seed(seed)}
    if case.spec.family == "linear":
        hidden = torch.randn(rows, case.hidden, dtype=dtype, **draw)
        linear_weight = torch.randn(case.classes, case.hidden, **draw)
        inputs = (hidden, linear_weight.mul_(case.hidden**-0.5).to(dtype))
    else:
        inputs = (torch.randn(rows, case.classes, dtype=dtype, **draw),)
    if case.spec.family == "sigmoid":
        # Drawn in the logits' dtype: an int64 draw would take 8 bytes per label first.
        target = torch.randint(0, 2, (rows, case.classes), dtype=dtype, **draw)
    else:
        target = torch.randint(0, case.classes, (rows,), **draw)
    for tensor in inputs:
        tensor.requires_grad_(case.pass_ == "forward_backward")
    return inputs, target


# --- Presets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A sweep: its shapes per loss family, and how long pytest-benchmark times each case.

    Each case is timed for about ``timing_budget_s`` (rounds = budget / one call's time, kept
    within [min_rounds, max_rounds]); on a GPU triton.testing.do_bench adds ``do_bench_ms``.
    """

    name: str
    dtypes: tuple[str, ...]
    # (batch, classes) per family; (batch, hidden, classes) for the linear loss.
    shapes: dict[Family, tuple[tuple[int, ...], ...]]
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
# Linear: CCE's Table 1 (Gemma 2's 2B: 8192 tokens, hidden 2304, vocabulary 256000; arXiv
# 2411.09009, published A100 figures in lossbench.bench.summary) and Liger-Kernel's benchmark of
# its fused linear cross-entropy (hidden 4096, Llama 3's vocabulary 128256, 4096 to 32768 tokens).
PEER_SHAPES: dict[Family, tuple[tuple[int, ...], ...]] = {
    "softmax": ((1048576, 10), (65536, 1000), (8192, 32768), (8192, 131072)),
    "sigmoid": ((8192, 16384), (65536, 80)),
    "linear": (
        (8192, 2304, 256000),
        (4096, 4096, 128256),
        (8192, 4096, 128256),
        (16384, 4096, 128256),
        (32768, 4096, 128256),
    ),
}


def _full_shapes(family: Family) -> tuple[tuple[int, ...], ...]:
    if family == "linear":
        # The peer shapes, and a vocabulary sweep at CCE's 8192 tokens and hidden 2304 (GPT-2's
        # 50257, Llama 2's 32000, Llama 3's 128256) for the memory-against-V plot.
        vocabulary = {(8192, 2304, v) for v in (32000, 50257, 128256)}
        shapes = set(PEER_SHAPES["linear"]) | vocabulary
        return tuple(sorted(shapes, key=lambda shape: (shape[0] * shape[2], shape)))
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
        shapes={"softmax": ((16, 10),), "sigmoid": ((16, 10),), "linear": ((16, 8, 40),)},
        impls=("torch", "torch-chunked", "reference", "triton", "liger", "cce"),
        timing_budget_s=0.01,
        min_rounds=1,
    ),
    # The CPU default: fp32 and bf16, class counts 10, 1000 and 32768 at small batches. Every
    # shape has over 4096 elements, past the size at which inductor's CPU code recompiles, so
    # compile costs 16 compilations (about 10 s each with a cold cache). The README states
    # the preset's measured run time, cold and warm.
    "quick": Preset(
        "quick",
        dtypes=("fp32", "bf16"),
        shapes={
            "softmax": ((512, 10), (64, 1000), (512, 1000), (32, 32768)),
            "sigmoid": ((512, 10), (64, 1000), (512, 1000), (32, 32768)),
            # Small enough for the Triton interpreter, whose peak memory is measured (the
            # allocations are torch's, and real): tokens 64 to 1024 at 1024 classes, classes 256
            # to 4096 at 256 tokens, hidden 32. Eager logits are then 0.25-4 MiB (fp32).
            "linear": (
                (64, 32, 1024),
                (256, 32, 1024),
                (1024, 32, 1024),
                (256, 32, 256),
                (256, 32, 4096),
            ),
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
    # compilations, by the same rates ~40 s + ~130 s: ~490 s in all. bench/gpu_check.sh runs
    # it with --max-minutes 2 and without reference: cases past the guard skip with that reason,
    # the biggest shapes last.
    "full": Preset(
        "full",
        dtypes=("bf16", "fp32"),
        shapes={family: _full_shapes(family) for family in ("softmax", "sigmoid", "linear")},
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
    hidden: tuple[int, ...] | None = None,
) -> list[Case]:
    """Every case of ``preset`` for the chosen losses, implementations and dtypes.

    ``batches``, ``classes`` and ``hidden`` (the linear loss's D) replace the preset's shapes by
    their full grid when given (one alone keeps the preset's values of the others). Only the
    implementations of each loss's family run (``FAMILY_IMPLEMENTATIONS``). Order: the peer
    shapes first, then by size, so that a run cut short by --max-minutes loses the biggest
    shapes; within a shape every implementation runs back to back.
    """
    cases = []
    for loss in losses:
        family = LOSSES[loss].family
        # (batch, hidden, classes), hidden 0 for the losses of logits.
        shapes = [
            shape if len(shape) == 3 else (shape[0], 0, shape[1])
            for shape in preset.shapes.get(family, ())
        ]
        linear = family == "linear"
        if batches or classes or (hidden and linear):
            shapes = list(
                itertools.product(
                    batches or sorted({n for n, _, _ in shapes}),
                    (hidden if linear else None) or sorted({d for _, d, _ in shapes}),
                    classes or sorted({c for _, _, c in shapes}),
                )
            )
        family_impls = [impl for impl in impls if impl in FAMILY_IMPLEMENTATIONS[family]]
        for (batch, n_hidden, n_classes), dtype, pass_, impl in itertools.product(
            shapes, dtypes, PASSES, family_impls
        ):
            cases.append(Case(loss, impl, dtype, batch, n_classes, pass_, n_hidden))

    def order(case: Case) -> tuple:
        peer = case.shape in PEER_SHAPES[case.spec.family]
        work = case.elements * max(case.hidden, 1)
        return (not peer, work, case.batch, case.dtype, case.pass_, case.loss)

    return sorted(cases, key=order)
