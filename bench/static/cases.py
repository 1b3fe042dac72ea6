"""What the static analyser compiles: one call of a fused loss, forward and backward, per case.

A case is the call the benchmark harness makes (lossbench.bench.cases: the loss with its
benchmark options, reduction 'mean', logits (N, C), then ``loss.backward()``), on the kernels of
lossbench.kernels, plus what the harness keeps fixed and the analyser varies: the dtype of a
sigmoid loss's targets (uint8 labels or the logits' dtype), the reduction, and extra options
(a class weight, label smoothing, ...) for the tests that compile every code path.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lossbench.bench.cases import DTYPES, LOSSES, PEER_SHAPES, Family

# Targets of a sigmoid loss: one byte per label, or the logits' dtype (what the harness uses).
SIGMOID_TARGETS = ("uint8", "logits")

# The default shapes: the full preset's peer shapes, and 8192 x 16384 for the softmax losses,
# the longest row the softmax kernel holds in registers (its budget is checked there too).
DEFAULT_SHAPES: dict[Family, tuple[tuple[int, int], ...]] = {
    "softmax": tuple(sorted({*PEER_SHAPES["softmax"], (8192, 16384)}, key=lambda s: s[1])),
    "sigmoid": PEER_SHAPES["sigmoid"],
}
DEFAULT_DTYPES = ("bf16", "fp32")
# The losses the analyser compiles: those of logits. linear_cross_entropy (kernels/linear.py, an
# autograd.Function whose logits are tiles of a matmul) has neither cases nor budgets here yet.
STATIC_LOSSES = tuple(name for name, spec in LOSSES.items() if spec.family in DEFAULT_SHAPES)


@dataclass(frozen=True)
class StaticCase:
    """One call to compile: ``loss`` on (batch, classes, *spatial) logits in ``dtype``.

    ``target``: "index" (int64 class indices) for softmax losses; "uint8", "bool" or a DTYPES
    name for sigmoid losses. ``options``: keyword arguments beyond the loss's benchmark options;
    ``weight=True`` / ``pos_weight=True`` stand for random tensors ((C,) and the logits' shape).
    """

    loss: str
    dtype: str
    batch: int
    classes: int
    target: str = "index"
    reduction: str = "mean"
    spatial: tuple[int, ...] = ()
    options: tuple[tuple[str, object], ...] = field(default_factory=tuple)

    @property
    def family(self) -> Family:
        return LOSSES[self.loss].family

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.batch, self.classes, *self.spatial)

    @property
    def elements(self) -> int:
        size = self.batch * self.classes
        for extent in self.spatial:
            size *= extent
        return size

    @property
    def rows(self) -> int:
        """Rows of a softmax loss (one per sample and position); elements of a sigmoid loss."""
        return self.elements // self.classes if self.family == "softmax" else self.elements

    @property
    def label(self) -> str:
        target = "" if self.family == "softmax" else f" + {self.target} targets"
        extras = "".join(f" {name}={value}" for name, value in self.options)
        shape = " x ".join(str(extent) for extent in self.shape)
        return f"{self.loss} {self.dtype}{target} {shape} {self.reduction}{extras}"

    def as_dict(self) -> dict[str, object]:
        return {
            "loss": self.loss,
            "dtype": self.dtype,
            "batch": self.batch,
            "classes": self.classes,
            "target": self.target,
            "reduction": self.reduction,
            "spatial": list(self.spatial),
            "options": [list(option) for option in self.options],
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> StaticCase:
        return cls(
            loss=data["loss"],
            dtype=data["dtype"],
            batch=data["batch"],
            classes=data["classes"],
            target=data["target"],
            reduction=data["reduction"],
            spatial=tuple(data["spatial"]),
            options=tuple((name, value) for name, value in data["options"]),
        )


def default_cases(
    losses: tuple[str, ...] = STATIC_LOSSES,
    dtypes: tuple[str, ...] = DEFAULT_DTYPES,
    batches: tuple[int, ...] | None = None,
    classes: tuple[int, ...] | None = None,
    targets: tuple[str, ...] = SIGMOID_TARGETS,
) -> list[StaticCase]:
    """The cases of a selection, as the harness builds its own (lossbench.bench.cases):
    ``batches`` and ``classes`` replace the default shapes by their full grid when given (one of
    them alone keeps the defaults' values of the other). Sigmoid losses run once per target kind
    of ``targets`` ("logits" is the logits' dtype)."""
    cases = []
    for loss in losses:
        family = LOSSES[loss].family
        shapes = DEFAULT_SHAPES[family]
        if batches or classes:
            shapes = tuple(
                itertools.product(
                    batches or sorted({n for n, _ in shapes}),
                    classes or sorted({c for _, c in shapes}),
                )
            )
        kinds = ("index",) if family == "softmax" else targets
        for (batch, n_classes), dtype, kind in itertools.product(shapes, dtypes, kinds):
            target = dtype if kind == "logits" else kind
            cases.append(StaticCase(loss, dtype, batch, n_classes, target=target))
    return cases


def _fake_two_rank_group():
    """torch.distributed's default group as rank 0 of two in a fake process group."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if not dist.is_initialized():
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    return dist.group.WORLD


def prepare_call(case: StaticCase) -> Callable[[], None]:
    """Make the inputs of ``case`` and return its call: the loss and ``loss.backward()``
    (upstream gradient 1 for a reduced loss, ones of the loss's shape for 'none').

    The logits are ``torch.empty``: the kernels are compiled, never run, so their values do not
    matter, and a large shape costs no memory until touched. Options: ``weight=True`` (a (C,)
    class weight; a softmax focal loss's alpha tensor), ``pos_weight=True`` (of the logits'
    shape), ``target_grad=True`` (a float target that requires grad), ``vocab_parallel=True``
    (the logits are rank 0's slice of twice as many classes, in a fake two-rank process group
    whose collectives do nothing: kernels.vocab_parallel), ``upstream=g`` (the upstream
    gradient's value instead of 1, a loss scale's say), and keyword arguments of the loss.
    """
    from lossbench import kernels

    arguments = {**LOSSES[case.loss].options, **dict(case.options)}
    dtype = DTYPES[case.dtype]
    logits = torch.empty(case.shape, dtype=dtype).requires_grad_()
    all_classes = case.classes
    if arguments.pop("vocab_parallel", False):
        all_classes = 2 * case.classes
        arguments.update(process_group=_fake_two_rank_group(), class_offset=0)
    if case.family == "softmax":
        target = torch.zeros((case.batch, *case.spatial), dtype=torch.int64)
    else:
        target_dtype = {"uint8": torch.uint8, "bool": torch.bool}.get(case.target)
        target = torch.zeros(case.shape, dtype=target_dtype or DTYPES[case.target])
        target.requires_grad_(bool(arguments.pop("target_grad", False)))
    if arguments.pop("weight", False):
        name = "alpha" if case.loss == "softmax_focal_loss" else "weight"
        arguments[name] = torch.rand(all_classes, dtype=dtype)
    if arguments.pop("pos_weight", False):
        arguments["pos_weight"] = torch.rand(case.shape, dtype=dtype)
    function = getattr(kernels, case.loss)
    upstream_value = float(arguments.pop("upstream", 1.0))
    upstream = None
    if case.reduction == "none":
        loss_shape = target.shape if case.family == "softmax" else case.shape
        upstream = torch.full(loss_shape, upstream_value, dtype=dtype)
    elif upstream_value != 1.0:
        upstream = torch.tensor(upstream_value, dtype=dtype)

    def call() -> None:
        logits.grad = target.grad = None  # a fresh gradient each call, as the harness's
        loss = function(logits, target, reduction=case.reduction, **arguments)
        loss.backward(upstream)

    return call
