"""reference/sigmoid.py against torch and torchvision: the oracle must itself be right.

float64: loss, input gradient and target gradient against torch within tolerance(float64), for every
option alone and combined, every reduction, several shapes and a non-contiguous view.
fp32 / fp16 / bf16: the reference run in that dtype against torch in float64 on the upcast inputs,
within tolerance(dtype). Then properties, extreme logits, and every kind of bad input.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import Tensor
from torch.nn.functional import binary_cross_entropy as torch_binary_cross_entropy
from torch.nn.functional import (
    binary_cross_entropy_with_logits as torch_binary_cross_entropy_with_logits,
)

from lossbench.reference.sigmoid import (
    BCELoss,
    BCEWithLogitsLoss,
    SigmoidFocalLoss,
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    sigmoid_focal_loss,
)
from lossbench.reference.tolerance import assert_close

from .helpers import loss_and_gradients, non_finite_sigmoid_case, upcast

# (7,): one row of a 1-D binary problem, odd length. (33, 80): N x C multi-label with COCO's 80
# classes (not a power of two). (4, 3, 17, 5): an (N, C, H, W) map with odd spatial sizes.
SHAPES = [(7,), (33, 80), (4, 3, 17, 5)]
REDUCTIONS = ["none", "mean", "sum"]
LOW_PRECISION = [torch.float32, torch.float16, torch.bfloat16]

# Shapes a weight or pos_weight may take, all broadcasting to the input's shape: the full shape,
# one per label on the last dimension ((C,), the usual pos_weight), one per row ((N, 1, ...)),
# and a scalar tensor.
WEIGHT_KINDS = ["full", "last_dim", "per_row", "scalar"]


def weight_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    return {
        "full": shape,
        "last_dim": shape[-1:],
        "per_row": shape[:1] + (1,) * (len(shape) - 1),
        "scalar": (),
    }[kind]


def random_targets(shape: tuple[int, ...], kind: str) -> Tensor:
    """float64 targets: "hard" 0/1 labels, "soft" uniform in [0, 1), or "mixed" (each at random)."""
    hard = torch.randint(0, 2, shape).to(torch.float64)
    soft = torch.rand(shape, dtype=torch.float64)
    return {
        "hard": hard,
        "soft": soft,
        "mixed": torch.where(torch.rand(shape) < 0.5, hard, soft),
    }[kind]


def random_probabilities(shape: tuple[int, ...]) -> Tensor:
    """Probabilities in [0.01, 0.99], where torch's BCE gradient and autograd's agree."""
    return 0.01 + 0.98 * torch.rand(shape, dtype=torch.float64)


def random_weight(shape: tuple[int, ...]) -> Tensor:
    """Positive, non-uniform weights in [0.1, 3.1)."""
    return 0.1 + 3 * torch.rand(shape, dtype=torch.float64)


def assert_matches(
    reference: Callable[..., Tensor],
    expected: Callable[..., Tensor],
    input: Tensor,
    target: Tensor,
    reduction: str,
    check_target_grad: bool = True,
    **options: Tensor | float | None,
) -> None:
    """The reference in the inputs' dtype against ``expected`` in float64 on the upcast inputs."""
    dtype = input.dtype
    # A random, signed, non-uniform upstream gradient catches a 'none' backward that ignores it.
    loss, input_grad, target_grad, upstream = loss_and_gradients(
        reference, input, target, target_grad=True, reduction=reduction, **options
    )
    expected_loss, expected_input_grad, expected_target_grad, _ = loss_and_gradients(
        expected,
        input.double(),
        target.double(),
        upstream.double(),
        target_grad=True,
        reduction=reduction,
        **upcast(options),
    )
    assert loss.dtype == dtype
    assert_close(loss, expected_loss, dtype, "loss")
    assert_close(input_grad, expected_input_grad, dtype, "input gradient")
    if check_target_grad:
        assert_close(target_grad, expected_target_grad, dtype, "target gradient")


def torchvision_focal(
    inputs: Tensor, targets: Tensor, reduction: str, alpha: float, gamma: float
) -> Tensor:
    return torchvision.ops.sigmoid_focal_loss(inputs, targets, alpha, gamma, reduction)


# float64 against torch / torchvision ------------------------------------------------------------


@pytest.mark.parametrize("weight_kind", [None, *WEIGHT_KINDS])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_bce_matches_torch_in_float64(
    shape: tuple[int, ...], reduction: str, weight_kind: str | None
) -> None:
    weight = None if weight_kind is None else random_weight(weight_shape(weight_kind, shape))
    assert_matches(
        binary_cross_entropy,
        torch_binary_cross_entropy,
        random_probabilities(shape),
        random_targets(shape, "mixed"),
        reduction,
        weight=weight,
    )


# (weight kind, pos_weight kind): neither, each kind of each alone, then both together.
WEIGHT_AND_POS_WEIGHT_KINDS = [
    (None, None),
    *((kind, None) for kind in WEIGHT_KINDS),
    *((None, kind) for kind in ("full", "last_dim", "per_row")),
    ("per_row", "last_dim"),
    ("full", "last_dim"),
    ("scalar", "full"),
]


@pytest.mark.parametrize(("weight_kind", "pos_weight_kind"), WEIGHT_AND_POS_WEIGHT_KINDS, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_bce_with_logits_matches_torch_in_float64(
    shape: tuple[int, ...],
    reduction: str,
    weight_kind: str | None,
    pos_weight_kind: str | None,
) -> None:
    weight = None if weight_kind is None else random_weight(weight_shape(weight_kind, shape))
    pos_weight = (
        None if pos_weight_kind is None else random_weight(weight_shape(pos_weight_kind, shape))
    )
    assert_matches(
        binary_cross_entropy_with_logits,
        torch_binary_cross_entropy_with_logits,
        3 * torch.randn(shape, dtype=torch.float64),
        random_targets(shape, "mixed"),
        reduction,
        weight=weight,
        pos_weight=pos_weight,
    )


# (alpha, gamma): torchvision's defaults; alpha at both ends and -1 (no weighting); gamma 0 (BCE),
# a fractional power and a non-integer above the usual 2.
ALPHA_AND_GAMMA = [(0.25, 2.0), (0.0, 0.5), (1.0, 3.7), (-1.0, 2.0), (0.25, 0.0), (-1.0, 0.0)]


@pytest.mark.parametrize(("alpha", "gamma"), ALPHA_AND_GAMMA, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_sigmoid_focal_matches_torchvision_in_float64(
    shape: tuple[int, ...], reduction: str, alpha: float, gamma: float
) -> None:
    assert_matches(
        sigmoid_focal_loss,
        torchvision_focal,
        3 * torch.randn(shape, dtype=torch.float64),
        random_targets(shape, "mixed"),
        reduction,
        alpha=alpha,
        gamma=gamma,
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_non_contiguous_views_match_torch(reduction: str) -> None:
    """A transposed, strided view (as a column slice of a bigger batch would be) of every input."""

    def strided_view(base: Tensor) -> Tensor:
        view = base.t()[:, ::2]
        assert not view.is_contiguous()
        return view

    logits = strided_view(3 * torch.randn(80, 33, dtype=torch.float64))
    probabilities = strided_view(random_probabilities((80, 33)))
    targets = strided_view(random_targets((80, 33), "soft"))
    weight = strided_view(random_weight((80, 33)))
    pos_weight = random_weight((80, 2))[:, 0]

    assert_matches(
        binary_cross_entropy,
        torch_binary_cross_entropy,
        probabilities,
        targets,
        reduction,
        weight=weight,
    )
    assert_matches(
        binary_cross_entropy_with_logits,
        torch_binary_cross_entropy_with_logits,
        logits,
        targets,
        reduction,
        weight=weight,
        pos_weight=pos_weight[::2],
    )
    assert_matches(
        sigmoid_focal_loss, torchvision_focal, logits, targets, reduction, alpha=0.25, gamma=2.0
    )


def test_bce_with_logits_gradient_at_logit_zero() -> None:
    """softplus'(0) = 1/2: a max(z, 0) whose gradient at the tie is 0 or 1 would be caught here."""
    logits = torch.randn(50, dtype=torch.float64)
    logits[::3] = 0.0
    targets = random_targets((50,), "soft")
    assert_matches(
        binary_cross_entropy_with_logits,
        torch_binary_cross_entropy_with_logits,
        logits,
        targets,
        "none",
        pos_weight=random_weight((50,)),
    )


# fp32 / fp16 / bf16 against float64 torch ------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_bce_in_low_precision_matches_float64_torch(dtype: torch.dtype, reduction: str) -> None:
    shape = (33, 80)
    assert_matches(
        binary_cross_entropy,
        torch_binary_cross_entropy,
        random_probabilities(shape).to(dtype),
        random_targets(shape, "soft").to(dtype),
        reduction,
        weight=random_weight((80,)).to(dtype),
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_bce_with_logits_in_low_precision_matches_float64_torch(
    dtype: torch.dtype, reduction: str
) -> None:
    shape = (4, 3, 17, 5)
    assert_matches(
        binary_cross_entropy_with_logits,
        torch_binary_cross_entropy_with_logits,
        (3 * torch.randn(shape)).to(dtype),
        random_targets(shape, "soft").to(dtype),
        reduction,
        weight=random_weight((4, 1, 1, 1)).to(dtype),
        pos_weight=random_weight((5,)).to(dtype),
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_sigmoid_focal_in_low_precision_matches_float64_torchvision(
    dtype: torch.dtype, reduction: str
) -> None:
    shape = (33, 80)
    assert_matches(
        sigmoid_focal_loss,
        torchvision_focal,
        (3 * torch.randn(shape)).to(dtype),
        random_targets(shape, "hard").to(dtype),
        reduction,
        alpha=0.25,
        gamma=2.0,
    )


# Extreme logits --------------------------------------------------------------------------------


# 'sum' is left out: 1e4-sized losses summed overflow fp16 (max 65504) in torch as well.
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_logits_of_magnitude_1e4_give_finite_results_matching_float64(
    dtype: torch.dtype, reduction: str
) -> None:
    """Logits of +-1e4 on both hard labels: right (loss 0) and confidently wrong (loss 1e4).

    The target gradient, about 1e4 x pos_weight x upstream, is left out: it exceeds fp16's range.
    """
    shape = (6, 10)
    logits = (1e4 * torch.randint(0, 2, shape) * 2 - 1e4).to(dtype)
    targets = random_targets(shape, "hard").to(dtype)
    pos_weight = random_weight((10,)).to(dtype)

    assert_matches(
        binary_cross_entropy_with_logits,
        torch_binary_cross_entropy_with_logits,
        logits,
        targets,
        reduction,
        check_target_grad=False,
        pos_weight=pos_weight,
    )
    assert_matches(
        sigmoid_focal_loss,
        torchvision_focal,
        logits,
        targets,
        reduction,
        check_target_grad=False,
        alpha=0.25,
        gamma=2.0,
    )


def test_bce_at_probabilities_exactly_0_and_1() -> None:
    """The loss is torch's (floored at 100); the gradient is finite, but differs from torch's.

    The floored log contributes no gradient, so what remains is the derivative of the other term:
    w (1 - y) / (1 - p) = w (1 - y) at p = 0 and -w y / p = -w y at p = 1 (the module doc explains
    why torch's w (p - y) / max(p (1 - p), 1e-12) differs there).
    """
    probabilities = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    targets = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.3, 0.7], dtype=torch.float64)
    weight = random_weight((6,))
    input = probabilities.clone().requires_grad_()

    loss = binary_cross_entropy(input, targets, weight, reduction="none")
    (input_grad,) = torch.autograd.grad(loss.sum(), input)

    expected = torch_binary_cross_entropy(probabilities, targets, weight, reduction="none")
    assert_close(loss, expected, torch.float64, "loss")
    at_zero = probabilities == 0
    expected_grad = torch.where(at_zero, weight * (1 - targets), -weight * targets)
    assert_close(input_grad, expected_grad, torch.float64, "input gradient")


# Properties ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_focal_with_gamma_0_and_no_alpha_is_bce_with_logits(shape: tuple[int, ...]) -> None:
    logits = 3 * torch.randn(shape, dtype=torch.float64)
    targets = random_targets(shape, "soft")
    upstream = torch.randn(shape, dtype=torch.float64)

    options = {"upstream": upstream, "target_grad": True, "reduction": "none"}
    focal = loss_and_gradients(
        sigmoid_focal_loss, logits, targets, alpha=-1.0, gamma=0.0, **options
    )
    bce = loss_and_gradients(binary_cross_entropy_with_logits, logits, targets, **options)

    for what, actual, expected in zip(
        ("loss", "input grad", "target grad"), focal[:3], bce[:3], strict=True
    ):
        assert_close(actual, expected, torch.float64, what)


def test_focal_with_gamma_0_is_bce_weighted_by_alpha_t() -> None:
    logits = 3 * torch.randn(33, 80, dtype=torch.float64)
    targets = random_targets((33, 80), "hard")
    alpha = 0.25
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)

    focal = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=0.0)
    bce = binary_cross_entropy_with_logits(logits, targets, weight=alpha_t, reduction="none")

    assert_close(focal, bce, torch.float64, "loss")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_mean_is_sum_over_element_count(shape: tuple[int, ...]) -> None:
    logits = 3 * torch.randn(shape, dtype=torch.float64)
    probabilities = random_probabilities(shape)
    targets = random_targets(shape, "soft")
    weight = random_weight(shape[-1:])
    count = logits.numel()

    for loss_function, input, options in [
        (binary_cross_entropy, probabilities, {"weight": weight}),
        (binary_cross_entropy_with_logits, logits, {"weight": weight, "pos_weight": weight}),
        (sigmoid_focal_loss, logits, {}),
    ]:
        mean = loss_function(input, targets, reduction="mean", **options)
        total = loss_function(input, targets, reduction="sum", **options)
        assert_close(mean, total / count, torch.float64, f"{loss_function.__name__} mean")


def test_bce_with_logits_equals_bce_on_sigmoid() -> None:
    """Moderate logits (|x| < 6), where BCE on sigmoid(x) has not lost precision yet."""
    shape = (33, 80)
    logits = 6 * (2 * torch.rand(shape, dtype=torch.float64) - 1)
    targets = random_targets(shape, "mixed")
    weight = random_weight((33, 1))
    upstream = torch.randn(shape, dtype=torch.float64)

    def bce_on_sigmoid(input: Tensor, target: Tensor, **options: object) -> Tensor:
        return binary_cross_entropy(torch.sigmoid(input), target, **options)

    options = {"upstream": upstream, "target_grad": True, "reduction": "none", "weight": weight}
    with_logits = loss_and_gradients(binary_cross_entropy_with_logits, logits, targets, **options)
    on_sigmoid = loss_and_gradients(bce_on_sigmoid, logits, targets, **options)

    for what, actual, expected in zip(
        ("loss", "input grad", "target grad"), with_logits[:3], on_sigmoid[:3], strict=True
    ):
        assert_close(actual, expected, torch.float64, what)


# Modules ---------------------------------------------------------------------------------------


def test_modules_match_torchs() -> None:
    logits = 3 * torch.randn(33, 80, dtype=torch.float64)
    probabilities = random_probabilities((33, 80))
    targets = random_targets((33, 80), "soft")
    weight = random_weight((80,))
    pos_weight = random_weight((80,))

    pairs = [
        (
            BCELoss(weight, reduction="sum")(probabilities, targets),
            torch.nn.BCELoss(weight, reduction="sum")(probabilities, targets),
        ),
        (
            BCEWithLogitsLoss(weight, pos_weight=pos_weight)(logits, targets),
            torch.nn.BCEWithLogitsLoss(weight, pos_weight=pos_weight)(logits, targets),
        ),
        (
            SigmoidFocalLoss(alpha=0.5, gamma=1.5, reduction="mean")(logits, targets),
            torchvision.ops.sigmoid_focal_loss(logits, targets, 0.5, 1.5, "mean"),
        ),
    ]
    for actual, expected in pairs:
        assert_close(actual, expected, torch.float64, "module loss")


def test_weights_are_buffers_like_torchs() -> None:
    weight = random_weight((80,))
    pos_weight = random_weight((80,))
    module = BCEWithLogitsLoss(weight, pos_weight=pos_weight)

    assert dict(module.named_buffers()).keys() == {"weight", "pos_weight"}
    assert set(module.state_dict()) == set(torch.nn.BCEWithLogitsLoss(weight).state_dict()) | {
        "pos_weight"
    }
    assert set(BCELoss(weight).state_dict()) == {"weight"}
    assert module.to(torch.float32).pos_weight.dtype == torch.float32
    assert "weight" not in BCELoss().state_dict()


# Bad input -------------------------------------------------------------------------------------

LOGITS = torch.randn(3, 4)
PROBABILITIES = torch.rand(3, 4)
TARGETS = torch.rand(3, 4)

BAD_INPUTS: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    (
        "bce shapes",
        lambda: binary_cross_entropy(PROBABILITIES, torch.rand(3, 5)),
        ValueError,
        r"\(3, 5\).*\(3, 4\)",
    ),
    (
        "bce weight",
        lambda: binary_cross_entropy(PROBABILITIES, TARGETS, torch.rand(3)),
        ValueError,
        r"weight of shape \(3,\)",
    ),
    (
        "bce weight enlarges",
        lambda: binary_cross_entropy(PROBABILITIES, TARGETS, torch.rand(2, 3, 4)),
        ValueError,
        "weight of shape",
    ),
    (
        "bce reduction",
        lambda: binary_cross_entropy(PROBABILITIES, TARGETS, reduction="avg"),
        ValueError,
        "reduction",
    ),
    (
        "bce integer input",
        lambda: binary_cross_entropy(torch.ones(3, 4, dtype=torch.long), TARGETS),
        TypeError,
        "input",
    ),
    (
        "bce integer target",
        lambda: binary_cross_entropy(PROBABILITIES, torch.ones(3, 4, dtype=torch.long)),
        TypeError,
        "target",
    ),
    (
        "bce input above 1",
        lambda: binary_cross_entropy(PROBABILITIES + 1.5, TARGETS),
        ValueError,
        "input must lie in",
    ),
    (
        "bce input below 0",
        lambda: binary_cross_entropy(-PROBABILITIES - 0.1, TARGETS),
        ValueError,
        "input must lie in",
    ),
    (
        "bce input nan",
        lambda: binary_cross_entropy(torch.full((3, 4), float("nan")), TARGETS),
        ValueError,
        "input must lie in",
    ),
    (
        "bce target above 1",
        lambda: binary_cross_entropy(PROBABILITIES, TARGETS + 1.5),
        ValueError,
        "target must lie in",
    ),
    (
        "logits shapes",
        lambda: binary_cross_entropy_with_logits(LOGITS, torch.rand(4, 3)),
        ValueError,
        r"\(4, 3\).*\(3, 4\)",
    ),
    (
        "logits weight",
        lambda: binary_cross_entropy_with_logits(LOGITS, TARGETS, torch.rand(3)),
        ValueError,
        r"weight of shape \(3,\)",
    ),
    (
        "logits pos_weight",
        lambda: binary_cross_entropy_with_logits(LOGITS, TARGETS, pos_weight=torch.rand(3)),
        ValueError,
        r"pos_weight of shape \(3,\)",
    ),
    (
        "logits pos_weight enlarges",
        lambda: binary_cross_entropy_with_logits(LOGITS, TARGETS, pos_weight=torch.rand(2, 1, 4)),
        ValueError,
        r"pos_weight of shape \(2, 1, 4\)",
    ),
    (
        "logits integer pos_weight",
        lambda: binary_cross_entropy_with_logits(
            LOGITS, TARGETS, pos_weight=torch.ones(4, dtype=torch.long)
        ),
        TypeError,
        "pos_weight",
    ),
    (
        "logits reduction",
        lambda: binary_cross_entropy_with_logits(LOGITS, TARGETS, reduction="batchmean"),
        ValueError,
        "reduction",
    ),
    (
        "logits integer input",
        lambda: binary_cross_entropy_with_logits(torch.ones(3, 4, dtype=torch.long), TARGETS),
        TypeError,
        "input",
    ),
    (
        "focal shapes",
        lambda: sigmoid_focal_loss(LOGITS, torch.rand(12)),
        ValueError,
        r"\(12,\).*\(3, 4\)",
    ),
    ("focal gamma", lambda: sigmoid_focal_loss(LOGITS, TARGETS, gamma=-0.5), ValueError, "gamma"),
    ("focal alpha", lambda: sigmoid_focal_loss(LOGITS, TARGETS, alpha=1.5), ValueError, "alpha"),
    (
        "focal reduction",
        lambda: sigmoid_focal_loss(LOGITS, TARGETS, reduction="avg"),
        ValueError,
        "reduction",
    ),
    (
        "focal integer targets",
        lambda: sigmoid_focal_loss(LOGITS, torch.ones(3, 4, dtype=torch.long)),
        TypeError,
        "targets",
    ),
    (
        "bce reduction positional (torch's size_average)",
        lambda: binary_cross_entropy(PROBABILITIES, TARGETS, None, "sum"),
        TypeError,
        "positional",
    ),
    (
        "logits reduction positional (torch's size_average)",
        lambda: binary_cross_entropy_with_logits(LOGITS, TARGETS, None, "sum"),
        TypeError,
        "positional",
    ),
    (
        "logits target on another device",
        lambda: binary_cross_entropy_with_logits(LOGITS, TARGETS.to("meta")),
        ValueError,
        r"one device.*target on meta",
    ),
    (
        "logits pos_weight on another device",
        lambda: binary_cross_entropy_with_logits(
            LOGITS, TARGETS, pos_weight=torch.ones(4, device="meta")
        ),
        ValueError,
        r"one device.*pos_weight on meta",
    ),
    (
        "bce weight on another device",
        lambda: binary_cross_entropy(PROBABILITIES, TARGETS, torch.ones(4, device="meta")),
        ValueError,
        r"one device.*weight on meta",
    ),
    (
        "focal targets on another device",
        lambda: sigmoid_focal_loss(LOGITS, TARGETS.to("meta")),
        ValueError,
        r"one device.*targets on meta",
    ),
    ("BCELoss reduction", lambda: BCELoss(reduction="avg"), ValueError, "reduction"),
    (
        "BCEWithLogitsLoss reduction",
        lambda: BCEWithLogitsLoss(reduction="x"),
        ValueError,
        "reduction",
    ),
    ("SigmoidFocalLoss gamma", lambda: SigmoidFocalLoss(gamma=-1.0), ValueError, "gamma"),
    ("SigmoidFocalLoss alpha", lambda: SigmoidFocalLoss(alpha=2.0), ValueError, "alpha"),
]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_raises(call: Callable[[], object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()


# Non-finite logits: torch's (torchvision's) semantics -------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "option",
    [{}, {"weight": "last"}, {"pos_weight": 2.0}, {"pos_weight": 2.0, "weight": "last"}],
    ids=["plain", "weight", "pos_weight", "both"],
)
def test_bce_with_non_finite_logits_follows_torch(option: dict, reduction: str) -> None:
    # +inf, -inf and nan logits against targets 0, 1 and 0.3: loss, input and target gradients.
    logits, targets = non_finite_sigmoid_case()
    options = {}
    if "weight" in option:
        options["weight"] = random_weight((12,))
    if "pos_weight" in option:
        options["pos_weight"] = torch.tensor(option["pos_weight"], dtype=torch.float64)
    ours = loss_and_gradients(
        binary_cross_entropy_with_logits,
        logits,
        targets,
        target_grad=True,
        reduction=reduction,
        **options,
    )
    theirs = loss_and_gradients(
        torch_binary_cross_entropy_with_logits,
        logits,
        targets,
        ours[3],
        target_grad=True,
        reduction=reduction,
        **options,
    )
    for what, actual, expected in zip(("loss", "input", "target"), ours, theirs, strict=False):
        assert_close(actual, expected, torch.float64, f"{what} with non-finite logits")


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (-1.0, 0.0), (0.25, 0.0), (-1.0, 1.5)])
def test_sigmoid_focal_with_non_finite_logits_follows_torchvision(
    alpha: float, gamma: float
) -> None:
    logits, targets = non_finite_sigmoid_case()
    ours = loss_and_gradients(
        sigmoid_focal_loss,
        logits,
        targets,
        target_grad=True,
        alpha=alpha,
        gamma=gamma,
        reduction="none",
    )
    theirs = loss_and_gradients(
        torchvision_focal,
        logits,
        targets,
        ours[3],
        target_grad=True,
        alpha=alpha,
        gamma=gamma,
        reduction="none",
    )
    for what, actual, expected in zip(("loss", "input", "target"), ours, theirs, strict=False):
        assert_close(actual, expected, torch.float64, f"{what} with non-finite logits")
