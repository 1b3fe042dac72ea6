"""reference/softmax.py against torch: cross-entropy and the multi-class focal loss.

Every comparison runs the reference in the dtype under test and torch in float64 on the same values
upcast, then checks the loss and the gradients with reference.tolerance.assert_close. Softmax
focal loss has no torch function to mirror, so its expectation is composed from torch pieces:
alpha_y * (1 - softmax(x)_y)^gamma * torch's cross_entropy(x, y, reduction='none').
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch.nn.functional import cross_entropy as torch_cross_entropy

from lossbench.reference.softmax import (
    CrossEntropyLoss,
    SoftmaxFocalLoss,
    cross_entropy,
    softmax_focal_loss,
)
from lossbench.reference.tolerance import assert_close

from .helpers import NON_FINITE_ROWS, loss_and_gradients, non_finite_softmax_case

# Five classes, not a power of two; (N, C, H, W) has spatial dims; (C,) is the unbatched form.
N_CLASSES = 5
SHAPES = {"N,C": (6, N_CLASSES), "N,C,H,W": (3, N_CLASSES, 2, 3), "C": (N_CLASSES,)}
REDUCTIONS = ("none", "mean", "sum")
LOW_PRECISION = (torch.float32, torch.bfloat16)
# "none": ignore_index at its default and no target ignored; "default": -100 at some positions;
# "class": ignore_index is a real class (1), so every target of class 1 is ignored.
IGNORE_MODES = ("none", "default", "class")


def class_dim(shape: tuple[int, ...]) -> int:
    return 0 if len(shape) == 1 else 1


def index_target_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    dim = class_dim(shape)
    return shape[:dim] + shape[dim + 1 :]


def make_logits(shape: tuple[int, ...]) -> torch.Tensor:
    """Float64 logits spread wide enough that some samples are easy and some hard."""
    return 3 * torch.randn(shape, dtype=torch.float64)


def make_index_target(shape: tuple[int, ...], ignore_mode: str) -> tuple[torch.Tensor, int]:
    """Class indices for logits of ``shape`` and the ignore_index that goes with them.

    With ignoring on, a batched target has at least one ignored and one kept position; the single
    target of an unbatched input is ignored (the all-ignored case).
    """
    target = torch.randint(0, N_CLASSES, index_target_shape(shape))
    flat = target.view(-1)
    if ignore_mode == "none":
        return target, -100
    ignore_index = -100 if ignore_mode == "default" else 1
    if ignore_mode == "default":
        flat[torch.rand(flat.shape) < 0.3] = ignore_index
    flat[0] = ignore_index
    if flat.numel() > 1:
        flat[-1] = (ignore_index + 1) % N_CLASSES if ignore_mode == "class" else 0
    return target, ignore_index


def make_probability_target(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.softmax(torch.randn(shape, dtype=torch.float64), dim=class_dim(shape))


def make_class_weight() -> torch.Tensor:
    """Positive, distinct per-class weights (never all equal, so a lost weight shows)."""
    return torch.rand(N_CLASSES, dtype=torch.float64) + 0.2


def loss_and_grads(loss_fn, differentiable: list[torch.Tensor], upstream: torch.Tensor):
    """Run ``loss_fn`` on fresh leaf copies of ``differentiable``; return loss and their grads.

    ``upstream`` is the gradient flowing into the loss (one entry per element for 'none').
    """
    leaves = [tensor.detach().clone().requires_grad_() for tensor in differentiable]
    loss = loss_fn(*leaves)
    grads = torch.autograd.grad(loss, leaves, grad_outputs=upstream.to(loss.dtype))
    return loss.detach(), grads


def random_upstream(logits_shape: tuple[int, ...], reduction: str) -> torch.Tensor:
    """A random, non-uniform upstream gradient of the loss's shape for logits of this shape."""
    loss_shape = index_target_shape(logits_shape) if reduction == "none" else ()
    return torch.randn(loss_shape, dtype=torch.float64)


def assert_matches_in_every_reduction(expected_fn, actual_fn, float64_inputs, dtype):
    """Loss and gradients of ``actual_fn(reduction, *inputs)`` in ``dtype`` against
    ``expected_fn(reduction, *inputs)`` in float64, for each reduction.

    The inputs are rounded to ``dtype`` first; the expectation sees those rounded values, upcast.
    """
    rounded = [tensor.to(dtype) for tensor in float64_inputs]
    upcast = [tensor.double() for tensor in rounded]
    for reduction in REDUCTIONS:
        upstream = random_upstream(tuple(rounded[0].shape), reduction)
        expected, expected_grads = loss_and_grads(partial(expected_fn, reduction), upcast, upstream)
        actual, actual_grads = loss_and_grads(partial(actual_fn, reduction), rounded, upstream)
        assert actual.dtype == dtype
        assert_close(actual, expected, dtype, f"{reduction} loss")
        for index, (actual_grad, expected_grad) in enumerate(
            zip(actual_grads, expected_grads, strict=True)
        ):
            assert actual_grad.dtype == dtype
            assert_close(
                actual_grad, expected_grad, dtype, f"{reduction}: gradient of input {index}"
            )


# Every option alone and all together, for the low-precision runs.
OPTION_SETS = {
    "plain": {},
    "weight": {"use_weight": True},
    "ignore": {"ignore_mode": "default"},
    "ignore_class": {"ignore_mode": "class"},
    "smoothing": {"label_smoothing": 0.3},
    "all": {"use_weight": True, "ignore_mode": "default", "label_smoothing": 0.3},
}


def check_cross_entropy_indices(
    shape, dtype, use_weight=False, ignore_mode="none", label_smoothing=0.0
):
    logits = make_logits(shape)
    target, ignore_index = make_index_target(shape, ignore_mode)
    weight = make_class_weight().to(dtype) if use_weight else None
    weight64 = None if weight is None else weight.double()
    options = {"ignore_index": ignore_index, "label_smoothing": label_smoothing}

    def ours(reduction, x):
        return cross_entropy(x, target, weight, reduction=reduction, **options)

    def theirs(reduction, x):
        return torch_cross_entropy(x, target, weight64, reduction=reduction, **options)

    assert_matches_in_every_reduction(theirs, ours, [logits], dtype)


@pytest.mark.parametrize("label_smoothing", (0.0, 0.3, 1.0))
@pytest.mark.parametrize("ignore_mode", IGNORE_MODES)
@pytest.mark.parametrize("use_weight", (False, True), ids=("no_weight", "weight"))
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_cross_entropy_class_indices_float64(shape, use_weight, ignore_mode, label_smoothing):
    check_cross_entropy_indices(shape, torch.float64, use_weight, ignore_mode, label_smoothing)


@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_cross_entropy_class_indices_low_precision(dtype, shape, options):
    check_cross_entropy_indices(shape, dtype, **options)


def check_cross_entropy_probabilities(shape, dtype, use_weight, label_smoothing):
    """Loss, input gradient and target gradient against torch (probability targets)."""
    weight = make_class_weight().to(dtype) if use_weight else None
    weight64 = None if weight is None else weight.double()

    def ours(reduction, x, q):
        return cross_entropy(x, q, weight, reduction=reduction, label_smoothing=label_smoothing)

    def theirs(reduction, x, q):
        return torch_cross_entropy(
            x, q, weight64, reduction=reduction, label_smoothing=label_smoothing
        )

    inputs = [make_logits(shape), make_probability_target(shape)]
    assert_matches_in_every_reduction(theirs, ours, inputs, dtype)


@pytest.mark.parametrize("label_smoothing", (0.0, 0.3, 1.0))
@pytest.mark.parametrize("use_weight", (False, True), ids=("no_weight", "weight"))
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_cross_entropy_class_probabilities_float64(shape, use_weight, label_smoothing):
    check_cross_entropy_probabilities(shape, torch.float64, use_weight, label_smoothing)


@pytest.mark.parametrize(
    ("use_weight", "label_smoothing"), [(False, 0.0), (True, 0.0), (False, 0.3), (True, 0.3)]
)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_cross_entropy_class_probabilities_low_precision(dtype, shape, use_weight, label_smoothing):
    check_cross_entropy_probabilities(shape, dtype, use_weight, label_smoothing)


def focal_from_torch(logits, target, alpha, gamma, ignore_index, reduction):
    """alpha_y (1 - p_y)^gamma * CE, from torch.softmax and torch's cross_entropy (0 if ignored)."""
    dim = class_dim(tuple(logits.shape))
    kept = target != ignore_index
    safe_target = torch.where(kept, target, 0)
    true_class_prob = (
        torch.softmax(logits, dim).gather(dim, safe_target.unsqueeze(dim)).squeeze(dim)
    )
    ce = torch_cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    loss = (1 - true_class_prob) ** gamma * ce
    if isinstance(alpha, torch.Tensor):
        loss = alpha[safe_target] * loss
    elif alpha is not None:
        loss = alpha * loss
    loss = torch.where(kept, loss, 0.0)
    if reduction == "mean":
        return loss.sum() / kept.sum()
    return loss.sum() if reduction == "sum" else loss


ALPHAS = ("none", "float", "tensor")


def make_alpha(kind: str) -> float | torch.Tensor | None:
    """None, a float, or distinct per-class entries in [0, 1] (the rule's range)."""
    if kind == "none":
        return None
    if kind == "float":
        return 0.25
    return torch.rand(N_CLASSES, dtype=torch.float64)


def check_focal(shape, dtype, alpha_kind, gamma, ignore_mode):
    target, ignore_index = make_index_target(shape, ignore_mode)
    alpha = make_alpha(alpha_kind)
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.to(dtype)
    alpha64 = alpha.double() if isinstance(alpha, torch.Tensor) else alpha

    def ours(reduction, x):
        return softmax_focal_loss(x, target, alpha, gamma, ignore_index, reduction)

    def theirs(reduction, x):
        return focal_from_torch(x, target, alpha64, gamma, ignore_index, reduction)

    assert_matches_in_every_reduction(theirs, ours, [make_logits(shape)], dtype)


@pytest.mark.parametrize("ignore_mode", IGNORE_MODES)
@pytest.mark.parametrize("gamma", (0.5, 2.0))
@pytest.mark.parametrize("alpha_kind", ALPHAS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_softmax_focal_loss_float64(shape, alpha_kind, gamma, ignore_mode):
    check_focal(shape, torch.float64, alpha_kind, gamma, ignore_mode)


@pytest.mark.parametrize(
    ("alpha_kind", "ignore_mode"), [("none", "none"), ("float", "class"), ("tensor", "default")]
)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_softmax_focal_loss_low_precision(dtype, shape, alpha_kind, ignore_mode):
    check_focal(shape, dtype, alpha_kind, 2.0, ignore_mode)


# The article's worked examples ------------------------------------------------------------------


def test_article_cross_entropy_example():
    loss = cross_entropy(torch.tensor([2.0, 1.0, 0.1], dtype=torch.float64), torch.tensor(0))
    assert round(loss.item(), 4) == 0.4170


@pytest.mark.parametrize(
    ("probabilities", "article_ce", "article_focal", "shrink"),
    [
        ([0.5, 0.3, 0.2], 1.2040, 0.5899, 1 / 0.49),  # hard example: shrunk about 2 times
        ([0.1, 0.8, 0.1], 0.2231, 0.0089, 25.0),  # easy example: shrunk 25 times
    ],
    ids=("hard", "easy"),
)
def test_article_focal_examples(probabilities, article_ce, article_focal, shrink):
    # Focal loss takes logits: log-probabilities are logits whose softmax is those probabilities.
    logits = torch.tensor(probabilities, dtype=torch.float64).log()
    true_class = torch.tensor(1)
    ce = cross_entropy(logits, true_class)
    for alpha in (None, 1.0):
        focal = softmax_focal_loss(logits, true_class, alpha=alpha, gamma=2.0)
        assert round(focal.item(), 4) == article_focal
        assert math.isclose((ce / focal).item(), shrink, rel_tol=1e-12)
    assert round(ce.item(), 4) == article_ce


# Properties -------------------------------------------------------------------------------------


@pytest.mark.parametrize("ignore_mode", IGNORE_MODES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_focal_with_gamma_zero_is_cross_entropy(shape, reduction, ignore_mode):
    logits = make_logits(shape)
    target, ignore_index = make_index_target(shape, ignore_mode)
    upstream = random_upstream(shape, reduction)
    focal, (focal_grad,) = loss_and_grads(
        lambda x: softmax_focal_loss(x, target, None, 0.0, ignore_index, reduction),
        [logits],
        upstream,
    )
    ce, (ce_grad,) = loss_and_grads(
        lambda x: cross_entropy(x, target, ignore_index=ignore_index, reduction=reduction),
        [logits],
        upstream,
    )
    assert_close(focal, ce, torch.float64, "focal loss at gamma=0")
    assert_close(focal_grad, ce_grad, torch.float64, "focal gradient at gamma=0")


def test_focal_alpha_tensor_at_gamma_zero_is_weighted_cross_entropy_except_mean():
    """'none' and 'sum' equal weighted CE; 'mean' divides by the count, not by sum of alpha_y."""
    logits = make_logits(SHAPES["N,C"])
    target, ignore_index = make_index_target(SHAPES["N,C"], "default")
    alpha = make_alpha("tensor")
    for reduction in ("none", "sum"):
        assert_close(
            softmax_focal_loss(logits, target, alpha, 0.0, ignore_index, reduction),
            cross_entropy(logits, target, alpha, ignore_index=ignore_index, reduction=reduction),
            torch.float64,
            reduction,
        )
    weighted_sum = cross_entropy(logits, target, alpha, ignore_index=ignore_index, reduction="sum")
    assert_close(
        softmax_focal_loss(logits, target, alpha, 0.0, ignore_index, "mean"),
        weighted_sum / (target != ignore_index).sum(),
        torch.float64,
        "mean",
    )


@pytest.mark.parametrize("use_weight", (False, True), ids=("no_weight", "weight"))
@pytest.mark.parametrize("label_smoothing", (0.0, 0.3))
@pytest.mark.parametrize("shape", [SHAPES["N,C"], SHAPES["N,C,H,W"]], ids=("N,C", "N,C,H,W"))
def test_cross_entropy_mean_is_sum_over_target_weights(shape, label_smoothing, use_weight):
    logits = make_logits(shape)
    target, ignore_index = make_index_target(shape, "default")
    weight = make_class_weight() if use_weight else None
    options = {"ignore_index": ignore_index, "label_smoothing": label_smoothing}
    kept = target[target != ignore_index]
    count = weight[kept].sum() if use_weight else kept.numel()
    total = cross_entropy(logits, target, weight, reduction="sum", **options)
    mean = cross_entropy(logits, target, weight, reduction="mean", **options)
    assert_close(mean, total / count, torch.float64, "mean")


@pytest.mark.parametrize("use_weight", (False, True), ids=("no_weight", "weight"))
def test_cross_entropy_probabilities_mean_is_sum_over_samples(use_weight):
    shape = SHAPES["N,C,H,W"]
    logits, target = make_logits(shape), make_probability_target(shape)
    weight = make_class_weight() if use_weight else None
    samples = math.prod(index_target_shape(shape))
    total = cross_entropy(logits, target, weight, reduction="sum")
    assert_close(cross_entropy(logits, target, weight), total / samples, torch.float64, "mean")


def test_focal_mean_is_sum_over_kept_count():
    shape = SHAPES["N,C,H,W"]
    logits = make_logits(shape)
    target, ignore_index = make_index_target(shape, "default")
    alpha = make_alpha("tensor")
    total = softmax_focal_loss(logits, target, alpha, 2.0, ignore_index, "sum")
    mean = softmax_focal_loss(logits, target, alpha, 2.0, ignore_index, "mean")
    assert_close(mean, total / (target != ignore_index).sum(), torch.float64, "mean")


def extreme_logits() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of +-1e4 with class 2 masked by -inf; rows 0 and 3 target the masked class."""
    logits = 1e4 * torch.randn(8, N_CLASSES, dtype=torch.float64).sign()
    logits[:, 2] = -math.inf
    target = torch.randint(0, N_CLASSES, (8,))
    target[target == 2] = 0
    target[0] = target[3] = 2
    return logits, target


@pytest.mark.parametrize("label_smoothing", (0.0, 0.3))
@pytest.mark.parametrize("use_weight", (False, True), ids=("no_weight", "weight"))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_extreme_logits_match_torch(reduction, use_weight, label_smoothing):
    """Finite exactly where torch is finite (inf/nan where torch has them), loss and gradient."""
    logits, target = extreme_logits()
    weight = make_class_weight() if use_weight else None
    options = {"reduction": reduction, "label_smoothing": label_smoothing}
    for rows in (slice(None), slice(1, 3)):  # with and without the rows that target class 2
        upstream = random_upstream(tuple(logits[rows].shape), reduction)
        ours, (our_grad,) = loss_and_grads(
            lambda x, rows=rows: cross_entropy(x, target[rows], weight, **options),
            [logits[rows]],
            upstream,
        )
        theirs, (their_grad,) = loss_and_grads(
            lambda x, rows=rows: torch_cross_entropy(x, target[rows], weight, **options),
            [logits[rows]],
            upstream,
        )
        assert_close(ours, theirs, torch.float64, "loss")
        assert_close(our_grad, their_grad, torch.float64, "gradient")
    if label_smoothing == 0.0:  # smoothing puts mass on the masked class: inf, in torch too
        assert torch.isfinite(cross_entropy(logits[1:3], target[1:3], weight, **options)).all()


def test_cross_entropy_extreme_probability_targets_match_torch():
    logits, _ = extreme_logits()
    target = make_probability_target(tuple(logits.shape))
    for label_smoothing in (0.0, 0.3):
        for zero_on_masked_class in (False, True):
            if zero_on_masked_class:
                target[:, 2] = 0.0
            upstream = torch.randn(8, dtype=torch.float64)
            options = {"reduction": "none", "label_smoothing": label_smoothing}
            ours, our_grads = loss_and_grads(
                lambda x, q, o=options: cross_entropy(x, q, **o), [logits, target], upstream
            )
            theirs, their_grads = loss_and_grads(
                lambda x, q, o=options: torch_cross_entropy(x, q, **o), [logits, target], upstream
            )
            assert_close(ours, theirs, torch.float64, "loss")
            for ours_grad, their_grad in zip(our_grads, their_grads, strict=True):
                assert_close(ours_grad, their_grad, torch.float64, "gradient")


def test_focal_extreme_logits_finite_where_cross_entropy_is():
    """Rows whose true class is not masked: finite, and equal to the torch composition."""
    logits, target = extreme_logits()
    rows = slice(1, 3)
    upstream = torch.randn(2, dtype=torch.float64)
    for gamma in (0.5, 2.0):
        ours, (our_grad,) = loss_and_grads(
            lambda x, g=gamma: softmax_focal_loss(x, target[rows], None, g, reduction="none"),
            [logits[rows]],
            upstream,
        )
        assert torch.isfinite(ours).all()
        assert torch.isfinite(our_grad).all()
        if gamma >= 1:  # below 1 the composition's pow backward is nan at p == 1; ours is 0
            theirs, (their_grad,) = loss_and_grads(
                lambda x, g=gamma: focal_from_torch(x, target[rows], None, g, -100, "none"),
                [logits[rows]],
                upstream,
            )
            assert_close(ours, theirs, torch.float64, "loss")
            assert_close(our_grad, their_grad, torch.float64, "gradient")
    masked_target_loss = softmax_focal_loss(logits, target, reduction="none")
    assert torch.isinf(masked_target_loss[[0, 3]]).all()


def test_log_probability_exact_near_probability_one():
    """At logits [40, 0, 0], 1 - p = 2e^-40 / (1 + 2e^-40): torch.logsumexp would round CE to 0."""
    logits = torch.tensor([[40.0, 0.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([0])
    others = 2 * math.exp(-40.0)
    one_minus_p = others / (1 + others)
    minus_log_p = math.log1p(others)

    ce, (ce_grad,) = loss_and_grads(
        lambda x: cross_entropy(x, target), [logits], torch.tensor(1.0, dtype=torch.float64)
    )
    p_other = math.exp(-40.0) / (1 + others)
    expected_grad = torch.tensor([[-one_minus_p, p_other, p_other]], dtype=torch.float64)
    assert_close(ce, torch.tensor(minus_log_p, dtype=torch.float64), torch.float64, "CE")
    assert_close(ce_grad, expected_grad, torch.float64, "CE gradient")

    focal = softmax_focal_loss(logits, target, gamma=2.0)
    expected_focal = torch.tensor(one_minus_p**2 * minus_log_p, dtype=torch.float64)
    assert_close(focal, expected_focal, torch.float64, "focal loss")


@pytest.mark.parametrize("gamma", (0.25, 0.5, 1.0, 2.0))
def test_focal_at_probability_exactly_one_has_zero_gradient(gamma):
    """p_y rounds to 1: the loss is 0 and so is its gradient (no 0 * inf nan for gamma < 1)."""
    logits = torch.tensor([[1e4, 0.0, -5.0], [3.0, -2e4, 1.0]], dtype=torch.float64)
    target = torch.tensor([0, 2])
    loss, (grad,) = loss_and_grads(
        lambda x: softmax_focal_loss(x, target, gamma=gamma, reduction="none"),
        [logits],
        torch.tensor([1.0, 0.0], dtype=torch.float64),
    )
    assert loss[0].item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("loss_name", ("cross_entropy", "smoothed", "weighted", "focal"))
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_all_ignored_mean_is_nan_and_sum_is_zero(shape, loss_name):
    logits = make_logits(shape)
    target = torch.full(index_target_shape(shape), -100)
    options = {
        "cross_entropy": {},
        "smoothed": {"label_smoothing": 0.2},
        "weighted": {"weight": make_class_weight()},
        "focal": {},
    }[loss_name]
    ours = softmax_focal_loss if loss_name == "focal" else cross_entropy
    assert torch.isnan(ours(logits, target, reduction="mean", **options))
    assert ours(logits, target, reduction="sum", **options).item() == 0.0
    if loss_name != "focal":
        assert torch.isnan(torch_cross_entropy(logits, target, reduction="mean", **options))


# Modules ----------------------------------------------------------------------------------------


def test_cross_entropy_module_matches_function_and_keeps_weight_as_buffer():
    logits = make_logits(SHAPES["N,C,H,W"])
    target, ignore_index = make_index_target(SHAPES["N,C,H,W"], "class")
    weight = make_class_weight()
    module = CrossEntropyLoss(
        weight, ignore_index=ignore_index, reduction="sum", label_smoothing=0.1
    )
    assert dict(module.named_buffers())["weight"] is weight
    expected = cross_entropy(
        logits, target, weight, ignore_index=ignore_index, reduction="sum", label_smoothing=0.1
    )
    assert torch.equal(module(logits, target), expected)
    module.float()
    assert module.weight.dtype == torch.float32
    assert "weight" not in dict(CrossEntropyLoss().named_buffers())


def test_focal_module_matches_function_and_keeps_tensor_alpha_as_buffer():
    logits = make_logits(SHAPES["N,C"])
    target, ignore_index = make_index_target(SHAPES["N,C"], "default")
    alpha = make_alpha("tensor")
    module = SoftmaxFocalLoss(alpha, gamma=1.5, ignore_index=ignore_index, reduction="none")
    assert dict(module.named_buffers())["alpha"] is alpha
    expected = softmax_focal_loss(logits, target, alpha, 1.5, ignore_index, "none")
    assert torch.equal(module(logits, target), expected)
    float_alpha = SoftmaxFocalLoss(0.25)
    assert float_alpha.alpha == 0.25 and not list(float_alpha.buffers())
    assert torch.equal(float_alpha(logits, target), softmax_focal_loss(logits, target, 0.25))


# Bad input --------------------------------------------------------------------------------------

LOGITS = torch.randn(4, N_CLASSES, dtype=torch.float64)
TARGET = torch.tensor([0, 4, 2, 1])


def bad_input_cases():
    """(what, call, exception, pattern the message must match)."""
    weight = torch.ones(N_CLASSES, dtype=torch.float64)
    return [
        ("reduction", lambda: cross_entropy(LOGITS, TARGET, reduction="avg"), ValueError, "avg"),
        ("integer input", lambda: cross_entropy(TARGET, TARGET), TypeError, "input"),
        ("scalar input", lambda: cross_entropy(LOGITS[0, 0], TARGET[0]), ValueError, r"\(\)"),
        (
            "smoothing < 0",
            lambda: cross_entropy(LOGITS, TARGET, label_smoothing=-0.1),
            ValueError,
            "label_smoothing",
        ),
        (
            "smoothing > 1",
            lambda: cross_entropy(LOGITS, TARGET, label_smoothing=1.5),
            ValueError,
            "label_smoothing",
        ),
        (
            "target batch",
            lambda: cross_entropy(LOGITS, TARGET[:3]),
            ValueError,
            r"\(4, 5\).*\(3,\)",
        ),
        (
            "unbatched target",
            lambda: cross_entropy(LOGITS[0], TARGET[:1]),
            ValueError,
            r"\(5,\).*\(1,\)",
        ),
        (
            "probability shape",
            lambda: cross_entropy(LOGITS, LOGITS[:, :4]),
            ValueError,
            r"\(4, 5\).*\(4, 4\)",
        ),
        (
            "float index target",
            lambda: cross_entropy(LOGITS, TARGET.double()),
            TypeError,
            "integer",
        ),
        ("bool index target", lambda: cross_entropy(LOGITS, TARGET > 0), TypeError, "integer"),
        (
            "integer probabilities",
            lambda: cross_entropy(LOGITS, LOGITS.long()),
            TypeError,
            "probabilities",
        ),
        (
            "index = C",
            lambda: cross_entropy(LOGITS, torch.tensor([0, 5, 1, 1])),
            ValueError,
            "class index 5",
        ),
        (
            "index < 0",
            lambda: cross_entropy(LOGITS, torch.tensor([0, -1, 1, 1])),
            ValueError,
            "class index -1",
        ),
        (
            "-100 not ignored",
            lambda: cross_entropy(LOGITS, torch.tensor([0, -100, 1, 1]), ignore_index=3),
            ValueError,
            "-100",
        ),
        (
            "weight shape",
            lambda: cross_entropy(LOGITS, TARGET, weight[:4]),
            ValueError,
            r"\(5,\).*\(4,\)",
        ),
        (
            "weight dtype",
            lambda: cross_entropy(LOGITS, TARGET, weight.float()),
            TypeError,
            "float32",
        ),
        (
            "integer weight",
            lambda: cross_entropy(LOGITS, TARGET, weight.long()),
            TypeError,
            "weight",
        ),
        (
            "focal reduction",
            lambda: softmax_focal_loss(LOGITS, TARGET, reduction=None),
            ValueError,
            "reduction",
        ),
        (
            "focal gamma",
            lambda: softmax_focal_loss(LOGITS, TARGET, gamma=-0.5),
            ValueError,
            "gamma",
        ),
        ("focal integer input", lambda: softmax_focal_loss(TARGET, TARGET), TypeError, "input"),
        (
            "focal alpha shape",
            lambda: softmax_focal_loss(LOGITS, TARGET, weight[:3]),
            ValueError,
            r"\(5,\).*\(3,\)",
        ),
        (
            "focal alpha dtype",
            lambda: softmax_focal_loss(LOGITS, TARGET, weight.float()),
            TypeError,
            "float32",
        ),
        (
            "focal negative alpha",
            lambda: softmax_focal_loss(LOGITS, TARGET, -0.25),
            ValueError,
            "alpha",
        ),
        (
            "focal negative alpha entry",
            lambda: softmax_focal_loss(LOGITS, TARGET, -weight),
            ValueError,
            "alpha",
        ),
        (
            "focal probabilities",
            lambda: softmax_focal_loss(LOGITS, torch.softmax(LOGITS, 1)),
            ValueError,
            r"\(4,\).*\(4, 5\)",
        ),
        (
            "focal index = C",
            lambda: softmax_focal_loss(LOGITS, torch.tensor([0, 1, 7, 1])),
            ValueError,
            "class index 7",
        ),
        ("module reduction", lambda: CrossEntropyLoss(reduction="avg"), ValueError, "avg"),
        ("focal module reduction", lambda: SoftmaxFocalLoss(reduction="avg"), ValueError, "avg"),
    ]


@pytest.mark.parametrize(
    ("call", "exception", "pattern"),
    [case[1:] for case in bad_input_cases()],
    ids=[case[0] for case in bad_input_cases()],
)
def test_bad_input_raises(call, exception, pattern):
    with pytest.raises(exception, match=pattern):
        call()


# --- z-loss: not in torch; the oracle of kernels.cross_entropy's z_loss_scale -------------------


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_z_loss_adds_scaled_squared_logsumexp_and_its_gradient(reduction: str) -> None:
    # z * lse^2 per kept sample, 'mean' over the kept count; d/dx_j = 2 z lse softmax_j. Checked
    # against torch's cross-entropy plus that term, and the gradient against the formula.
    z_loss_scale = 0.05
    logits = (3 * torch.randn(7, 5, dtype=torch.float64)).requires_grad_()
    target = torch.randint(0, 5, (7,))
    target[2] = -100
    kept = target != -100
    with_z = cross_entropy(logits, target, reduction=reduction, z_loss_scale=z_loss_scale)
    plain = torch_cross_entropy(logits, target, reduction=reduction)
    log_sum_exp = logits.logsumexp(1)
    z_terms = torch.where(kept, z_loss_scale * log_sum_exp**2, 0.0)
    expected_z = {"none": z_terms, "sum": z_terms.sum(), "mean": z_terms.sum() / kept.sum()}
    assert_close(with_z, plain + expected_z[reduction], torch.float64, "loss with z-loss")

    upstream = torch.randn_like(with_z)
    (z_gradient,) = torch.autograd.grad(with_z - plain, logits, upstream)
    row_scale = {"none": upstream, "sum": upstream, "mean": upstream / kept.sum()}[reduction]
    expected = (2 * z_loss_scale * log_sum_exp * row_scale * kept)[:, None] * logits.softmax(1)
    assert_close(z_gradient, expected.detach(), torch.float64, "z-loss gradient")


def test_z_loss_rejects_bad_values_and_probability_targets() -> None:
    logits = torch.randn(4, 3)
    with pytest.raises(ValueError, match="z_loss_scale must be finite and >= 0"):
        cross_entropy(logits, torch.zeros(4, dtype=torch.long), z_loss_scale=-1.0)
    with pytest.raises(ValueError, match="class-index targets"):
        cross_entropy(logits, torch.rand(4, 3).softmax(1), z_loss_scale=0.1)


# --- Targets as torch takes them ----------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_uint8_class_indices_like_torch(reduction: str) -> None:
    # torch's cross_entropy takes "Long or Byte" class indices; so does the oracle, and the
    # focal loss with them.
    logits = make_logits(SHAPES["N,C"])
    target = torch.randint(0, N_CLASSES, (SHAPES["N,C"][0],), dtype=torch.uint8)
    weight = make_class_weight()
    ours, ours_grad, _, upstream = loss_and_gradients(
        cross_entropy, logits, target, weight=weight, reduction=reduction
    )
    theirs, theirs_grad, _, _ = loss_and_gradients(
        torch_cross_entropy, logits, target, upstream, weight=weight, reduction=reduction
    )
    assert_close(ours, theirs, torch.float64, "loss")
    assert_close(ours_grad, theirs_grad, torch.float64, "gradient")
    assert torch.equal(
        softmax_focal_loss(logits, target, reduction=reduction),
        softmax_focal_loss(logits, target.long(), reduction=reduction),
    )


@pytest.mark.parametrize("loss", [cross_entropy, softmax_focal_loss])
def test_tensors_on_different_devices_raise_naming_them(loss) -> None:
    with pytest.raises(ValueError, match=r"one device.*target on meta"):
        loss(LOGITS, TARGET.to("meta"))
    with pytest.raises(ValueError, match=r"one device.*input on meta"):
        loss(LOGITS.to("meta"), TARGET)


def test_probability_target_takes_no_ignore_index_like_torch() -> None:
    logits = make_logits(SHAPES["N,C"])
    probabilities = make_probability_target(SHAPES["N,C"])
    for ignore_index in (0, 1):
        with pytest.raises(ValueError, match="ignore_index is not supported for floating point"):
            cross_entropy(logits, probabilities, ignore_index=ignore_index)
        with pytest.raises(RuntimeError, match="ignore_index is not supported for floating point"):
            torch_cross_entropy(logits, probabilities, ignore_index=ignore_index)
    # A negative one is accepted and unused, as by torch.
    assert torch.equal(
        cross_entropy(logits, probabilities, ignore_index=-1), cross_entropy(logits, probabilities)
    )


# --- Non-finite logits: torch's semantics -------------------------------------------------------

NON_FINITE_OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "label_smoothing": {"label_smoothing": 0.2},
}


def _non_finite_options(name: str) -> dict:
    options = dict(NON_FINITE_OPTIONS[name])
    if options.pop("weight", False):
        options["weight"] = torch.rand(4, dtype=torch.float64) + 0.2
    return options


@pytest.mark.parametrize("option", list(NON_FINITE_OPTIONS))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(NON_FINITE_ROWS))
def test_non_finite_logits_follow_torch(case: str, reduction: str, option: str) -> None:
    logits, target = non_finite_softmax_case(case)
    options = _non_finite_options(option)
    ours, ours_grad, _, upstream = loss_and_gradients(
        cross_entropy, logits, target, reduction=reduction, **options
    )
    theirs, theirs_grad, _, _ = loss_and_gradients(
        torch_cross_entropy, logits, target, upstream, reduction=reduction, **options
    )
    # Non-finite entries must match exactly (nan for nan, the same infinity), finite ones closely.
    assert_close(ours, theirs, torch.float64, f"{case}: loss")
    assert_close(ours_grad, theirs_grad, torch.float64, f"{case}: gradient")


@pytest.mark.parametrize("zero_at_the_non_finite_class", [False, True])
@pytest.mark.parametrize("case", [name for name in NON_FINITE_ROWS if "ignored" not in name])
def test_non_finite_logits_with_probability_targets_follow_torch(
    case: str, zero_at_the_non_finite_class: bool
) -> None:
    # With no probability on a class at -inf, torch's 0 x log 0 makes the loss nan; with some,
    # the loss is inf. Both gradients as torch's.
    logits, _ = non_finite_softmax_case(case)
    probabilities = torch.softmax(torch.randn(3, 4, dtype=torch.float64), dim=1)
    if zero_at_the_non_finite_class:
        probabilities[0, 0] = 0.0
        probabilities[0] /= probabilities[0].sum()
    for options in ({}, {"label_smoothing": 0.2}):
        ours = loss_and_gradients(
            cross_entropy, logits, probabilities, target_grad=True, reduction="none", **options
        )
        theirs = loss_and_gradients(
            torch_cross_entropy,
            logits,
            probabilities,
            ours[3],
            target_grad=True,
            reduction="none",
            **options,
        )
        for what, actual, expected in zip(
            ("loss", "input grad", "target grad"), ours[:3], theirs[:3], strict=True
        ):
            assert_close(actual, expected, torch.float64, f"{case} {options}: {what}")


@pytest.mark.parametrize("case", list(NON_FINITE_ROWS))
def test_non_finite_logits_in_the_focal_loss(case: str) -> None:
    # gamma = 0 without alpha is cross-entropy, non-finite logits included. With gamma > 0: a row
    # without a softmax is nan (its gradient too); -inf at the target costs inf with the gradient's
    # limit alpha_y (p - onehot); -inf elsewhere is a class of probability exactly 0.
    logits, target = non_finite_softmax_case(case)
    focal_ce = loss_and_gradients(softmax_focal_loss, logits, target, gamma=0.0, reduction="none")
    torch_ce = loss_and_gradients(
        torch_cross_entropy, logits, target, focal_ce[3], reduction="none"
    )
    assert_close(focal_ce[0], torch_ce[0], torch.float64, "focal(gamma=0) loss")
    assert_close(focal_ce[1], torch_ce[1], torch.float64, "focal(gamma=0) gradient")

    alpha = torch.rand(4, dtype=torch.float64)
    loss, grad, _, upstream = loss_and_gradients(
        softmax_focal_loss, logits, target, alpha=alpha, reduction="none"
    )
    row = logits[0]
    if torch.isnan(row).any() or torch.isposinf(row).any() or torch.isneginf(row).all():
        assert loss[0].isnan() == (target[0] != -100)
        assert grad[0].isnan().all()
    elif case == "-inf at the target":
        assert loss[0] == math.inf
        onehot = torch.nn.functional.one_hot(target[0], 4)
        expected = alpha[target[0]] * (torch.softmax(row, 0) - onehot) * upstream[0]
        assert_close(grad[0], expected, torch.float64, "gradient at p_y = 0")
    else:  # -inf elsewhere: as a logit so small that its exp is exactly 0
        masked = logits.clone()
        masked[0, 0] = -1e300
        expected = loss_and_gradients(
            softmax_focal_loss, masked, target, upstream, alpha=alpha, reduction="none"
        )
        assert_close(loss, expected[0], torch.float64, "loss with a masked class")
        assert_close(grad, expected[1], torch.float64, "gradient with a masked class")
    assert torch.isfinite(loss[1:]).all() and torch.isfinite(grad[1:]).all()
