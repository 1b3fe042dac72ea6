"""The checks tests/test_vocab_parallel.py runs inside every rank of a gloo group.

One spawn per world size runs them all (``run_rank``): spawning costs seconds per rank on two
cores, a check costs milliseconds. Every rank draws the same full inputs (the global RNG seeded
alike on every rank before each check), keeps its slice of the classes, and compares its loss and
gradient slice with the single-device float64 reference on the full logits. Assertions come after
every collective of a check, so a failing rank never leaves the others waiting in one.
"""

from __future__ import annotations

import datetime
import json
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor.debug import CommDebugMode

import lossbench.kernels  # noqa: F401  (first: Triton's interpreter before triton is imported)
from lossbench.bench.distributed.collectives import CollectiveRecorder
from lossbench.kernels import softmax as fused
from lossbench.kernels.softmax import MAX_FUSED_C
from lossbench.reference import softmax as reference
from lossbench.reference.tolerance import assert_close
from lossbench.reference.vocab_parallel import class_slices

from .helpers import loss_and_gradients, nan_poisoned_allocations, upcast

IGNORE = -100
# 13 rows: not a power of two, one program of 16 rows (3 padding rows) in the kernels.
N_ROWS = 13
REDUCTIONS = ("none", "mean", "sum")
# (oracle, kernel) of each loss; the oracle runs in float64, the kernel in float32.
FUNCTIONS = {
    "cross_entropy": (reference.cross_entropy, fused.cross_entropy),
    "softmax_focal_loss": (reference.softmax_focal_loss, fused.softmax_focal_loss),
}


@dataclass
class Rank:
    """This process's place in the group, and the slices of one check."""

    rank: int
    world: int
    group: dist.ProcessGroup

    def sizes(self, pattern: str = "uneven") -> list[int]:
        """Class counts by rank. uneven: 1, 4, 3, 2, ... (a one-class slice, no two alike at
        p = 2 or 4, C not a power of two); even: 3 each."""
        if pattern == "even":
            return [3] * self.world
        return [(3 * r) % 4 + 1 for r in range(self.world)]


CHECKS: dict[str, Callable[[Rank], None]] = {}


def check(function: Callable[[Rank], None]) -> Callable[[Rank], None]:
    CHECKS[function.__name__.removeprefix("check_")] = function
    return function


# --- The comparison ----------------------------------------------------------------------------


def _slice(full: torch.Tensor, sizes: list[int], rank: int) -> tuple[torch.Tensor, int]:
    offset = sum(sizes[:rank])
    return full.narrow(1, offset, sizes[rank]).contiguous(), offset


def _same_on_every_rank(me: Rank, loss: torch.Tensor, what: str) -> None:
    gathered = [torch.empty_like(loss) for _ in range(me.world)]
    dist.all_gather(gathered, loss.detach().contiguous(), group=me.group)
    for rank, other in enumerate(gathered):
        torch.testing.assert_close(
            other, gathered[0], rtol=0, atol=0, equal_nan=True, msg=f"{what}: rank {rank}"
        )


def compare(
    me: Rank,
    loss: str,
    logits: torch.Tensor,
    target: torch.Tensor,
    sizes: list[int],
    *,
    impls: tuple[str, ...] = ("reference", "kernel"),
    dtype: torch.dtype = torch.float32,
    oracle_tolerance: torch.dtype = torch.float64,
    **options: object,
) -> None:
    """Loss and gradient slice of each implementation against the single-device float64 loss on
    the full ``logits``, with one upstream gradient shared by every rank; the loss must be the
    same, bit for bit, on every rank.

    The kernel computes in ``dtype`` and is held to its tolerance; the oracle computes in float64
    and is held to ``oracle_tolerance``'s (float64's unless a check says why not).
    """
    dtype_of = {"reference": oracle_tolerance, "kernel": dtype}
    oracle, kernel = FUNCTIONS[loss]
    logits = logits.double()
    expected, expected_grad, _, upstream = loss_and_gradients(
        oracle, logits, target, **upcast(options)
    )
    local, offset = _slice(logits, sizes, me.rank)
    expected_slice = expected_grad.narrow(1, offset, sizes[me.rank])
    results = {}
    for impl in impls:
        function, compute_dtype = oracle, torch.float64
        if impl == "kernel":
            function, compute_dtype = kernel, dtype
        cast = options if compute_dtype != torch.float64 else upcast(options)
        cast = {
            name: value.to(compute_dtype) if isinstance(value, torch.Tensor) else value
            for name, value in cast.items()
        }
        with nan_poisoned_allocations():
            results[impl] = loss_and_gradients(
                function,
                local.to(compute_dtype),
                target,
                upstream.to(compute_dtype),
                process_group=me.group,
                class_offset=offset,
                **cast,
            )
        _same_on_every_rank(me, results[impl][0], f"{impl} loss")
    for impl, (actual, actual_grad, _, _) in results.items():
        assert actual.dtype == (torch.float64 if impl == "reference" else dtype), impl
        assert_close(actual, expected, dtype_of[impl], f"{impl} {loss} loss, rank {me.rank}")
        assert_close(
            actual_grad, expected_slice, dtype_of[impl], f"{impl} {loss} gradient, rank {me.rank}"
        )


def _targets(n_classes: int, shape: tuple[int, ...] = (N_ROWS,), ignored: bool = False):
    target = torch.randint(0, n_classes, shape)
    if ignored:
        flat = target.view(-1)
        flat[torch.randperm(flat.numel())[: max(1, flat.numel() // 4)]] = IGNORE
    return target


def _weight(n_classes: int) -> torch.Tensor:
    return torch.rand(n_classes) + 0.1


# --- Every option and reduction ----------------------------------------------------------------

CROSS_ENTROPY_OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "ignore_index": {"ignored": True},
    "label_smoothing": {"label_smoothing": 0.2},
    "z_loss": {"z_loss_scale": 1e-2},
    "all": {"weight": True, "ignored": True, "label_smoothing": 0.3, "z_loss_scale": 1e-2},
}


def _cross_entropy_check(option: str, reduction: str) -> Callable[[Rank], None]:
    def run(me: Rank) -> None:
        sizes = me.sizes()
        n_classes = sum(sizes)
        settings = dict(CROSS_ENTROPY_OPTIONS[option])
        target = _targets(n_classes, ignored=settings.pop("ignored", False))
        if settings.pop("weight", False):
            settings["weight"] = _weight(n_classes)
        logits = torch.randn(N_ROWS, n_classes) * 3
        compare(me, "cross_entropy", logits, target, sizes, reduction=reduction, **settings)

    return run


for _option in CROSS_ENTROPY_OPTIONS:
    for _reduction in REDUCTIONS:
        CHECKS[f"cross_entropy_{_option}_{_reduction}"] = _cross_entropy_check(_option, _reduction)

# (alpha, gamma): unweighted, a float alpha with gamma < 1, a per-class alpha, and gamma = 0.
FOCAL_OPTIONS = {
    "plain": (None, 2.0),
    "float_alpha": (0.25, 0.5),
    "alpha_tensor": ("tensor", 2.0),
    "gamma_zero": ("tensor", 0.0),
}


def _focal_check(option: str, reduction: str) -> Callable[[Rank], None]:
    def run(me: Rank) -> None:
        sizes = me.sizes()
        n_classes = sum(sizes)
        alpha, gamma = FOCAL_OPTIONS[option]
        if alpha == "tensor":
            alpha = torch.rand(n_classes)  # per-class alpha lies in [0, 1] (the focal rule)
        target = _targets(n_classes, ignored=True)
        logits = torch.randn(N_ROWS, n_classes) * 3
        compare(
            me, "softmax_focal_loss", logits, target, sizes,
            alpha=alpha, gamma=gamma, ignore_index=IGNORE, reduction=reduction,
        )  # fmt: skip

    return run


for _option in FOCAL_OPTIONS:
    for _reduction in REDUCTIONS:
        CHECKS[f"focal_{_option}_{_reduction}"] = _focal_check(_option, _reduction)


# --- Layouts and shapes --------------------------------------------------------------------------


@check
def check_even_slices(me: Rank) -> None:
    sizes = me.sizes("even")
    target = _targets(sum(sizes))
    logits = torch.randn(N_ROWS, sum(sizes))
    compare(me, "cross_entropy", logits, target, sizes, label_smoothing=0.1)


@check
def check_every_target_on_rank_0(me: Rank) -> None:
    # The other ranks hold no target of any row: their loss comes from the all-reduces alone.
    sizes = me.sizes()
    target = _targets(sizes[0])
    logits = torch.randn(N_ROWS, sum(sizes)) * 3
    compare(me, "cross_entropy", logits, target, sizes, weight=_weight(sum(sizes)))
    compare(me, "softmax_focal_loss", logits, target, sizes, gamma=1.5)


@check
def check_every_target_on_the_last_rank(me: Rank) -> None:
    sizes = me.sizes()
    target = _targets(sizes[-1]) + sum(sizes[:-1])
    logits = torch.randn(N_ROWS, sum(sizes)) * 3
    compare(me, "cross_entropy", logits, target, sizes, reduction="none", label_smoothing=0.2)


@check
def check_spatial_input(me: Rank) -> None:
    # (N, C, d1, d2): the slice's rows are (sample, position) pairs, the class stride is d1*d2.
    sizes = me.sizes()
    n_classes = sum(sizes)
    logits = torch.randn(3, n_classes, 2, 3) * 2
    target = _targets(n_classes, (3, 2, 3), ignored=True)
    for reduction in ("none", "mean"):
        compare(
            me, "cross_entropy", logits, target, sizes,
            reduction=reduction, weight=_weight(n_classes), label_smoothing=0.1,
        )  # fmt: skip


@check
def check_unbatched_input(me: Rank) -> None:
    sizes = me.sizes()
    logits = torch.randn(sum(sizes))
    target = torch.randint(0, sum(sizes), ())
    oracle, kernel = FUNCTIONS["cross_entropy"]
    expected = oracle(logits.double(), target)
    local, offset = logits[sum(sizes[: me.rank]) :][: sizes[me.rank]], sum(sizes[: me.rank])
    for function, dtype in ((oracle, torch.float64), (kernel, torch.float32)):
        actual = function(local.to(dtype), target, process_group=me.group, class_offset=offset)
        assert_close(actual, expected, dtype, "unbatched loss")


@check
def check_bf16_kernel(me: Rank) -> None:
    sizes = me.sizes()
    target = _targets(sum(sizes), ignored=True)
    logits = (torch.randn(N_ROWS, sum(sizes)) * 3).bfloat16()
    compare(
        me, "cross_entropy", logits, target, sizes,
        impls=("kernel",), dtype=torch.bfloat16, label_smoothing=0.1, z_loss_scale=1e-3,
    )  # fmt: skip


@check
def check_chunked_slices(me: Rank) -> None:
    # Rank 0's slice is one class over MAX_FUSED_C: the kernels' chunked loop, two chunks.
    sizes = [MAX_FUSED_C + 1, *me.sizes()[1:]]
    target = _targets(sum(sizes), (2,))
    logits = torch.randn(2, sum(sizes)) * 2
    compare(
        me, "cross_entropy", logits, target, sizes,
        impls=("kernel",), weight=_weight(sum(sizes)), label_smoothing=0.1,
    )  # fmt: skip


# --- Extreme values ------------------------------------------------------------------------------


@check
def check_logits_of_plus_minus_1e4(me: Rank) -> None:
    sizes = me.sizes()
    logits = torch.randn(N_ROWS, sum(sizes)).sign() * 1e4
    target = _targets(sum(sizes))
    compare(me, "cross_entropy", logits, target, sizes, label_smoothing=0.1)
    compare(me, "softmax_focal_loss", logits, target, sizes, reduction="sum")


@check
def check_true_class_probability_close_to_one(me: Rank) -> None:
    # log p_y of about -1e-9: each rank's share of rest is tiny, and 1 + rest - 1 would lose it.
    sizes = me.sizes()
    target = _targets(sum(sizes))
    logits = torch.randn(N_ROWS, sum(sizes))
    logits[torch.arange(N_ROWS), target] = 25.0
    # The kernels keep the gradient's relative precision here. The oracle does not: its max is a
    # constant of the all-reduce, so autograd forms 1 - p_y as 1 - 1 / (1 + rest), exact to
    # float64's absolute 1e-16 only (reference/vocab_parallel.py): 1e-6 relative at rest ~ 1e-10.
    for loss, options in (
        ("softmax_focal_loss", {"reduction": "none", "gamma": 0.5}),
        ("cross_entropy", {"reduction": "none"}),
    ):
        compare(me, loss, logits, target, sizes, oracle_tolerance=torch.float32, **options)


@check
def check_max_tied_across_ranks(me: Rank) -> None:
    # The same largest logit on every rank: each counts once, and one of them is the 1 in 1 + rest.
    sizes = me.sizes()
    logits = torch.randn(N_ROWS, sum(sizes))
    for offset in (sum(sizes[:r]) for r in range(me.world)):
        logits[:, offset] = 6.0
    target = _targets(sum(sizes))
    compare(me, "cross_entropy", logits, target, sizes, label_smoothing=0.2)
    compare(me, "softmax_focal_loss", logits, target, sizes)


@check
def check_a_slice_of_minus_inf(me: Rank) -> None:
    # Rank 0's classes are all -inf in half the rows (its max is -inf there); targets elsewhere.
    sizes = me.sizes()
    logits = torch.randn(N_ROWS, sum(sizes))
    logits[::2, : sizes[0]] = float("-inf")
    target = _targets(sum(sizes) - sizes[0]) + sizes[0]
    compare(me, "cross_entropy", logits, target, sizes, weight=_weight(sum(sizes)))
    compare(me, "softmax_focal_loss", logits, target, sizes, reduction="none")


@check
def check_all_ignored_mean_is_nan(me: Rank) -> None:
    sizes = me.sizes()
    target = torch.full((N_ROWS,), IGNORE)
    compare(me, "cross_entropy", torch.randn(N_ROWS, sum(sizes)), target, sizes)


@check
def check_inplace_backward(me: Rank) -> None:
    # The gradient slice written over this rank's logits: during forward ('mean'), in backward
    # ('none'); the logits are a layer's output, not a leaf.
    sizes = me.sizes()
    full = torch.randn(N_ROWS, sum(sizes)) * 2
    target = _targets(sum(sizes), ignored=True)
    local, offset = _slice(full, sizes, me.rank)
    for reduction in ("mean", "none"):
        expected, expected_grad, _, upstream = loss_and_gradients(
            reference.cross_entropy, full.double(), target, reduction=reduction,
            label_smoothing=0.1,
        )  # fmt: skip
        leaf = local.clone().requires_grad_()
        logits = leaf * 1.0
        loss = fused.cross_entropy(
            logits, target, reduction=reduction, label_smoothing=0.1, inplace_backward=True,
            process_group=me.group, class_offset=offset,
        )  # fmt: skip
        loss.backward(upstream.float())
        expected_slice = expected_grad.narrow(1, offset, sizes[me.rank])
        assert_close(loss, expected, torch.float32, f"inplace {reduction} loss")
        assert_close(leaf.grad, expected_slice, torch.float32, f"inplace {reduction} gradient")
        assert_close(logits.detach(), expected_slice, torch.float32, f"{reduction}: over logits")


@check
def check_modules(me: Rank) -> None:
    # The module forms take process_group and class_offset and give the functions' results.
    sizes = me.sizes()
    full = torch.randn(N_ROWS, sum(sizes)) * 2
    target = _targets(sum(sizes), ignored=True)
    local, offset = _slice(full, sizes, me.rank)
    weight = _weight(sum(sizes))
    alpha = weight / weight.max()
    for package in (reference, fused):
        split = {"process_group": me.group, "class_offset": offset}
        cases = (
            (
                package.CrossEntropyLoss(weight, label_smoothing=0.1, **split),
                partial(package.cross_entropy, weight=weight, label_smoothing=0.1, **split),
            ),
            (
                package.SoftmaxFocalLoss(alpha, 1.5, **split),
                partial(package.softmax_focal_loss, alpha=alpha, gamma=1.5, **split),
            ),
        )
        for module, function in cases:
            expected, expected_grad, _, upstream = loss_and_gradients(function, local, target)
            loss, grad, _, _ = loss_and_gradients(module, local, target, upstream)
            what = f"{type(module).__module__}.{type(module).__name__}"
            torch.testing.assert_close(loss, expected, rtol=0, atol=0, msg=what)
            torch.testing.assert_close(grad, expected_grad, rtol=0, atol=0, msg=what)


@check
def check_no_grad_writes_no_gradient(me: Rank) -> None:
    sizes = me.sizes()
    full = torch.randn(N_ROWS, sum(sizes))
    target = _targets(sum(sizes))
    local, offset = _slice(full, sizes, me.rank)
    logits = local.clone().requires_grad_()
    with torch.no_grad():
        loss = fused.cross_entropy(
            logits * 1.0, target, inplace_backward=True, process_group=me.group,
            class_offset=offset,
        )  # fmt: skip
    assert_close(loss, reference.cross_entropy(full.double(), target), torch.float32, "no_grad")
    assert torch.equal(logits.detach(), local), "the logits changed under no_grad"


@check
def check_create_graph_raises(me: Rank) -> None:
    # First-order gradients only, as on one device: a second-order term through the kernels
    # (a gradient penalty) would otherwise vanish without a word.
    sizes = me.sizes()
    local, offset = _slice(torch.randn(N_ROWS, sum(sizes)), sizes, me.rank)
    logits = local.clone().requires_grad_()
    target = _targets(sum(sizes))
    for reduction in ("none", "mean"):
        loss = fused.cross_entropy(
            logits, target, reduction=reduction, process_group=me.group, class_offset=offset
        )
        _raises(
            RuntimeError,
            "first-order gradients only",
            lambda loss=loss: torch.autograd.grad(loss.sum(), logits, create_graph=True),
        )


@check
def check_empty_batch(me: Rank) -> None:
    # N = 0: the collectives carry only C; 'mean' over nothing is nan, as torch's.
    sizes = me.sizes()
    target = torch.zeros(0, dtype=torch.long)
    offset = sum(sizes[: me.rank])
    dtypes = (torch.float64, torch.float32)
    for function, dtype in zip(FUNCTIONS["cross_entropy"], dtypes, strict=True):
        local = torch.randn(0, sizes[me.rank], dtype=dtype)
        for reduction, holds in (
            ("mean", lambda loss: bool(loss.isnan())),
            ("sum", lambda loss: float(loss) == 0.0),
            ("none", lambda loss: loss.shape == (0,)),
        ):
            loss = function(
                local, target, reduction=reduction, process_group=me.group, class_offset=offset
            )
            assert holds(loss), f"{function.__module__} {reduction} over no rows: {loss}"


# --- Communication -------------------------------------------------------------------------------


@check
def check_two_all_reduces_forward_none_backward(me: Rank) -> None:
    sizes = me.sizes()
    n_classes = sum(sizes)
    full = torch.randn(N_ROWS, n_classes)
    target = _targets(n_classes)
    local, offset = _slice(full, sizes, me.rank)
    for loss_name, options in (
        ("cross_entropy", {"label_smoothing": 0.1, "weight": _weight(n_classes)}),
        ("cross_entropy", {"z_loss_scale": 1e-3}),
        ("softmax_focal_loss", {}),
    ):
        for reduction in REDUCTIONS:
            for impl, function in zip(("reference", "kernel"), FUNCTIONS[loss_name], strict=True):
                logits = local.clone().requires_grad_()
                with CommDebugMode() as forward_mode, CollectiveRecorder() as forward:
                    loss = function(
                        logits, target, process_group=me.group, class_offset=offset,
                        reduction=reduction, **options,
                    )  # fmt: skip
                with CommDebugMode() as backward_mode, CollectiveRecorder() as backward:
                    loss.backward(torch.ones_like(loss))
                what = f"{impl} {loss_name} {reduction}"
                assert forward_mode.get_total_counts() == 2, (
                    f"{what}: {forward_mode.get_comm_counts()}"
                )
                assert forward.count == 2 and forward.kinds == ["allreduce", "allreduce"], what
                # The payloads: N maxima, then 3 or 4 sums per row and C: O(N), never O(N * C).
                assert forward.elements <= 5 * N_ROWS + 1, f"{what}: {forward.elements} values"
                assert backward_mode.get_total_counts() == 0 and backward.count == 0, what


@check
def check_offsets_worked_out_with_one_all_gather(me: Rank) -> None:
    sizes = me.sizes()
    full = torch.randn(N_ROWS, sum(sizes))
    target = _targets(sum(sizes))
    local, offset = _slice(full, sizes, me.rank)
    slices = class_slices(sizes[me.rank], me.group)
    assert (slices.offset, slices.n_classes, slices.sizes) == (offset, sum(sizes), tuple(sizes))
    expected = reference.cross_entropy(full.double(), target)
    for function, dtype in zip(
        FUNCTIONS["cross_entropy"], (torch.float64, torch.float32), strict=True
    ):
        with CollectiveRecorder() as recorder:
            actual = function(local.to(dtype), target, process_group=me.group)
        assert recorder.kinds == ["allgather", "allreduce", "allreduce"], recorder.kinds
        assert_close(actual, expected, dtype, "loss with offsets worked out")


# --- Errors ------------------------------------------------------------------------------------


def _raises(error: type[Exception], message: str, call: Callable[[], object]) -> None:
    try:
        call()
    except error as raised:
        assert message in str(raised), f"{error.__name__} without {message!r}: {raised}"
        return
    raise AssertionError(f"no {error.__name__} ({message!r})")


@check
def check_errors(me: Rank) -> None:
    sizes = me.sizes()
    n_classes = sum(sizes)
    local = torch.randn(N_ROWS, sizes[me.rank])
    target = _targets(n_classes)
    offset = sum(sizes[: me.rank])
    for function in (reference.cross_entropy, fused.cross_entropy):
        # Before any collective, on every rank alike.
        _raises(
            ValueError, "class_offset",
            lambda f=function: f(local, target, process_group=me.group, class_offset=-1),
        )  # fmt: skip
        _raises(
            TypeError, "ProcessGroup",
            lambda f=function: f(local, target, process_group="world", class_offset=offset),
        )  # fmt: skip
        _raises(
            NotImplementedError, "class-index targets",
            lambda f=function: f(local, torch.rand(N_ROWS, sizes[me.rank]), process_group=me.group),
        )  # fmt: skip
        _raises(
            ValueError, "full (C,) vector",
            lambda f=function: f(
                local, target, torch.ones(1), process_group=me.group, class_offset=offset + 1
            ),
        )  # fmt: skip
        # After the collectives, once C is known: on every rank alike.
        bad_target = target.clone()
        bad_target[3] = n_classes
        _raises(
            ValueError, f"outside [0, {n_classes})",
            lambda f=function, t=bad_target: f(
                local, t, process_group=me.group, class_offset=offset
            ),
        )  # fmt: skip
        _raises(
            ValueError, f"shape ({n_classes},)",
            lambda f=function: f(
                local, target, torch.ones(n_classes + 1), process_group=me.group,
                class_offset=offset,
            ),
        )  # fmt: skip
        # One rank's slice reaches past C: that rank raises, the others get their loss.
        last = me.rank == me.world - 1
        shift = 1 if last else 0
        call = lambda f=function, s=shift: f(  # noqa: E731
            local, target, process_group=me.group, class_offset=offset + s
        )
        if last:
            _raises(ValueError, "reach past", call)
        else:
            call()
        # Rows that differ between ranks, found by the all-gather that works out the offsets.
        rows = N_ROWS + me.rank
        _raises(
            ValueError, "same rows",
            lambda f=function, n=rows: f(
                torch.randn(n, sizes[me.rank]), _targets(n_classes, (n,)), process_group=me.group
            ),
        )  # fmt: skip


# --- The rank's entry point --------------------------------------------------------------------


def run_rank(rank: int, world: int, init_file: str, seed: int, results_dir: str) -> None:
    """Join the gloo group, run every check (``only``: those named), write this rank's failures.

    Writes ``rank<r>.json``: {check name: None when it passed, else its traceback}.
    """
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        # A check that fails between two collectives leaves the others waiting: not for long.
        timeout=datetime.timedelta(seconds=60),
    )
    me = Rank(rank, world, dist.group.WORLD)
    outcomes: dict[str, str | None] = {}
    try:
        for name, function in CHECKS.items():
            torch.default_generator.manual_seed(seed ^ zlib.crc32(name.encode()))
            try:
                function(me)
                outcomes[name] = None
            except Exception:
                outcomes[name] = traceback.format_exc()
    finally:
        Path(results_dir, f"rank{rank}.json").write_text(json.dumps(outcomes))
        dist.destroy_process_group()
