"""kernels/sigmoid.py against the float64 oracle, reference/sigmoid.py.

Every comparison runs the kernel on inputs in their own dtype and the reference in float64 on the
same values upcast, then checks the loss, the input gradient and (where the target requires grad)
the target gradient with reference.tolerance.assert_close. Every float tensor the kernels
allocate during a test is poisoned with nan first, so an element the kernel forgot to write fails
the comparison. On a CPU the kernels run in Triton's interpreter: sizes stay small; the same file
runs compiled on a GPU, where the test marked ``gpu`` also crosses 2^31 elements.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (torch's own spelling)
from torch import Tensor

import lossbench.kernels.sigmoid as kernel_module
from lossbench.kernels._common import KERNEL_DEVICE
from lossbench.kernels.sigmoid import (
    PROGRAM_ELEMENTS,
    BCEWithLogitsLoss,
    SigmoidFocalLoss,
    binary_cross_entropy_with_logits,
    sigmoid_focal_loss,
)
from lossbench.reference import sigmoid as reference
from lossbench.reference.tolerance import assert_close, tolerance

from .helpers import loss_and_gradients, non_finite_sigmoid_case, upcast, upstream_gradient

pytestmark = pytest.mark.usefixtures("poisoned_allocations")

DEVICE = KERNEL_DEVICE
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
REDUCTIONS = ["none", "mean", "sum"]
# (7,): a 1-D binary problem, far below one block. (33, 80): N x C multi-label with COCO's 80
# classes (not a power of two), 2640 elements: two programs, the second one partly masked (and
# a (C,) pos_weight, where used, starts the second block mid-row). (4, 3, 17, 5): (N, C, H, W)
# with odd sizes.
SHAPES = [(7,), (33, 80), (4, 3, 17, 5)]
TARGET_KINDS = ["hard", "soft", "bool", "uint8"]

LossFunction = Callable[..., Tensor]


def torchvision_sigmoid_focal_loss(*args: object, **kwargs: object) -> Tensor:
    """torchvision's focal loss, imported only when called.

    torchvision imports triton. Imported at the top of this module (third-party imports come
    before first-party ones), it would import triton before kernels/__init__.py sets
    TRITON_INTERPRET on a CPU, leaving triton's own jitted helpers (tl.sum's combine function)
    in compiled mode, which the interpreter cannot call.
    """
    from torchvision.ops import sigmoid_focal_loss as torchvision_focal_loss

    return torchvision_focal_loss(*args, **kwargs)


def random_logits(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """Logits of both signs, spread over a few units: confident and uncertain elements."""
    return (4 * torch.randn(shape)).to(device=DEVICE, dtype=dtype)


def random_targets(shape: tuple[int, ...], kind: str, dtype: torch.dtype) -> Tensor:
    """0/1 labels as float ('hard'), bool or uint8, or soft targets uniform in [0, 1)."""
    if kind == "soft":
        return torch.rand(shape, device=DEVICE).to(dtype)
    labels = torch.randint(0, 2, shape, device=DEVICE)
    return labels.to({"hard": dtype, "bool": torch.bool, "uint8": torch.uint8}[kind])


def random_weight(shape: tuple[int, ...]) -> Tensor:
    """Positive, non-uniform weights in [0.1, 3.1), fp32."""
    return 0.1 + 3 * torch.rand(shape, device=DEVICE)


def comparison_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The least precise of the float dtypes involved; arithmetic is fp32 at best."""
    floats = [dtype for dtype in dtypes if dtype.is_floating_point and dtype != torch.float64]
    return max([torch.float32, *floats], key=tolerance)


def assert_matches_reference(
    kernel: LossFunction,
    oracle: LossFunction,
    input: Tensor,
    target: Tensor,
    target_grad: bool = False,
    **options: object,
) -> Tensor:
    """Kernel against the float64 oracle: loss, input and target gradients. Returns the loss."""
    loss, input_grad, target_grad_value, upstream = loss_and_gradients(
        kernel, input, target, target_grad=target_grad, **options
    )
    expected_loss, expected_input_grad, expected_target_grad, _ = loss_and_gradients(
        oracle,
        input.double(),
        target.double(),
        upstream.double(),
        target_grad=target_grad,
        **upcast(options),
    )
    assert input_grad.dtype == input.dtype and input_grad.shape == input.shape
    dtype = comparison_dtype(input.dtype, target.dtype, loss.dtype)
    assert_close(loss, expected_loss, dtype, "loss")
    assert_close(input_grad, expected_input_grad, dtype, "input gradient")
    if target_grad:
        assert target_grad_value.dtype == target.dtype
        assert_close(target_grad_value, expected_target_grad, dtype, "target gradient")
    return loss


# Every dtype, reduction and shape ---------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bce_matches_reference(dtype: torch.dtype, reduction: str, shape: tuple[int, ...]) -> None:
    assert_matches_reference(
        binary_cross_entropy_with_logits,
        reference.binary_cross_entropy_with_logits,
        random_logits(shape, dtype),
        random_targets(shape, "hard", dtype),
        reduction=reduction,
    )


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_focal_matches_reference(
    dtype: torch.dtype, reduction: str, shape: tuple[int, ...]
) -> None:
    assert_matches_reference(
        sigmoid_focal_loss,
        reference.sigmoid_focal_loss,
        random_logits(shape, dtype),
        random_targets(shape, "hard", dtype),
        reduction=reduction,
    )


# Targets: float (hard and soft), bool and uint8 -------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target_kind", TARGET_KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_target_kinds(dtype: torch.dtype, target_kind: str, reduction: str) -> None:
    shape = (33, 80)
    input = random_logits(shape, dtype)
    target = random_targets(shape, target_kind, dtype)
    bce = assert_matches_reference(
        binary_cross_entropy_with_logits,
        reference.binary_cross_entropy_with_logits,
        input,
        target,
        reduction=reduction,
    )
    focal = assert_matches_reference(
        sigmoid_focal_loss,
        reference.sigmoid_focal_loss,
        input,
        target,
        reduction=reduction,
        alpha=0.3,
        gamma=2.0,
    )
    # A bool or uint8 target gives the loss in the input's dtype (torch accepts neither).
    assert bce.dtype == focal.dtype == dtype


def test_loss_dtype_follows_torch() -> None:
    """BCE returns the target's dtype (torch computes in place in it); focal the promoted one."""
    input = random_logits((33, 80), torch.float32)
    target = random_targets((33, 80), "soft", torch.float16)
    expected_bce = F.binary_cross_entropy_with_logits(input, target, reduction="none")
    expected_focal = torchvision_sigmoid_focal_loss(input, target)
    assert binary_cross_entropy_with_logits(input, target, reduction="none").dtype == (
        expected_bce.dtype
    )
    assert sigmoid_focal_loss(input, target).dtype == expected_focal.dtype
    assert_matches_reference(
        binary_cross_entropy_with_logits,
        reference.binary_cross_entropy_with_logits,
        input,
        target,
        reduction="mean",
    )


# The gradient of a soft target (knowledge distillation) -----------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_bce_target_gradient(dtype: torch.dtype, reduction: str) -> None:
    shape = (4, 3, 17, 5)
    assert_matches_reference(
        binary_cross_entropy_with_logits,
        reference.binary_cross_entropy_with_logits,
        random_logits(shape, dtype),
        random_targets(shape, "soft", dtype),
        target_grad=True,
        reduction=reduction,
        weight=random_weight((3, 1, 1)),
        pos_weight=random_weight((5,)),
    )


# gamma: 0 (no modulation), the integer powers compiled as constants (1, 2), one above
# MAX_CONSTANT_GAMMA (5) and two fractional ones (below 1, where m^(gamma - 1) is unbounded).
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 5.0, 0.5, 2.7])
@pytest.mark.parametrize("alpha", [0.25, -1.0])
def test_focal_options_and_target_gradient(alpha: float, gamma: float, reduction: str) -> None:
    shape = (33, 80)
    assert_matches_reference(
        sigmoid_focal_loss,
        reference.sigmoid_focal_loss,
        random_logits(shape, torch.float32),
        random_targets(shape, "soft", torch.float32),
        target_grad=True,
        reduction=reduction,
        alpha=alpha,
        gamma=gamma,
    )


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.5])
def test_focal_alpha_extremes_and_any_negative_alpha(alpha: float) -> None:
    """alpha 0 and 1 zero one class; every negative alpha means no weighting, like alpha = -1."""
    shape = (33, 80)
    input = random_logits(shape, torch.float32)
    target = random_targets(shape, "hard", torch.float32)
    loss = assert_matches_reference(
        sigmoid_focal_loss, reference.sigmoid_focal_loss, input, target, alpha=alpha
    )
    if alpha < 0:
        unweighted = sigmoid_focal_loss(input, target, alpha=-1.0)
        assert_close(loss, unweighted, torch.float32, "alpha < 0 against alpha = -1")


# Weights: broadcast in place, or materialised ---------------------------------------------------

# (N, C, H, W) with 2244 elements: two programs, so the second block starts mid-period for every
# broadcast weight below (an index that ignored the block's phase would be caught).
WEIGHTED_SHAPE = (4, 3, 17, 11)
# weight shape, pos_weight shape. Read in place: full, last dimension, per row, per channel,
# scalar, trailing dimensions. Materialised: (4, 1, 17, 1) (two separate varying dimensions).
WEIGHT_CASES = [
    ((4, 3, 17, 11), None),
    ((11,), None),
    ((4, 1, 1, 1), (11,)),
    ((1, 3, 1, 1), (4, 3, 17, 11)),
    ((), (3, 17, 11)),
    ((4, 1, 17, 1), (17, 1)),
    (None, (11,)),
    (None, (4, 1, 17, 1)),
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shapes", WEIGHT_CASES, ids=str)
def test_bce_weights(
    shapes: tuple[tuple[int, ...] | None, tuple[int, ...] | None], reduction: str
) -> None:
    weight_shape, pos_weight_shape = shapes
    assert_matches_reference(
        binary_cross_entropy_with_logits,
        reference.binary_cross_entropy_with_logits,
        random_logits(WEIGHTED_SHAPE, torch.float32),
        random_targets(WEIGHTED_SHAPE, "soft", torch.float32),
        reduction=reduction,
        weight=None if weight_shape is None else random_weight(weight_shape),
        pos_weight=None if pos_weight_shape is None else random_weight(pos_weight_shape),
    )


@pytest.mark.parametrize(
    ("weight_shape", "read_in_place"),
    [((80,), True), ((33, 1), True), ((), True), ((33, 80), True), ((33, 80, 2), False)],
    ids=str,
)
def test_weight_layout_reads_simple_patterns_in_place(
    weight_shape: tuple[int, ...], read_in_place: bool
) -> None:
    """The documented no-copy claim: simple patterns are indexed in the caller's storage."""
    weight = random_weight(weight_shape)
    if len(weight_shape) == 3:
        weight = weight[..., 0]  # a full-shape weight with stride 2: copied once
    buffer, _ = kernel_module._weight_layout("weight", weight, torch.Size((33, 80)))
    assert (buffer.data_ptr() == weight.data_ptr()) == read_in_place


def test_bce_weight_with_bf16_logits_and_uint8_targets() -> None:
    """The multi-label fast path: bf16 logits, 1-byte labels, (C,) pos_weight, (N, 1) weight."""
    shape = (33, 80)
    assert_matches_reference(
        binary_cross_entropy_with_logits,
        reference.binary_cross_entropy_with_logits,
        random_logits(shape, torch.bfloat16),
        random_targets(shape, "uint8", torch.bfloat16),
        reduction="mean",
        weight=random_weight((33, 1)).to(torch.bfloat16),
        pos_weight=random_weight((80,)),
    )


# Layout: non-contiguous views, a tail just past a block, empty inputs ----------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("focal", [False, True], ids=["bce", "focal"])
def test_non_contiguous_inputs(focal: bool, reduction: str) -> None:
    """A transposed input, a strided slice as target, and a non-contiguous weight."""
    input = random_logits((80, 33), torch.float16).t()
    target = random_targets((33, 160), "soft", torch.float32)[:, ::2]
    assert not input.is_contiguous() and not target.is_contiguous()
    if focal:
        kernel, oracle, options = sigmoid_focal_loss, reference.sigmoid_focal_loss, {}
    else:
        kernel = binary_cross_entropy_with_logits
        oracle = reference.binary_cross_entropy_with_logits
        options = {"weight": random_weight((80, 33)).t(), "pos_weight": random_weight((160,))[::2]}
    assert_matches_reference(
        kernel, oracle, input, target, target_grad=True, reduction=reduction, **options
    )


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_one_element_past_a_program(reduction: str) -> None:
    """PROGRAM_ELEMENTS + 1 elements: a second program holding one element in the first of its
    steps, with a pos_weight of the input's shape."""
    shape = (PROGRAM_ELEMENTS + 1,)
    assert_matches_reference(
        binary_cross_entropy_with_logits,
        reference.binary_cross_entropy_with_logits,
        random_logits(shape, torch.float32),
        random_targets(shape, "bool", torch.float32),
        reduction=reduction,
        pos_weight=random_weight(shape),
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("focal", [False, True], ids=["bce", "focal"])
def test_empty_input_like_torch(focal: bool, reduction: str) -> None:
    """numel 0: 'mean' is nan, 'sum' is 0, 'none' is empty, as torch; gradients are empty."""
    input = torch.empty((0, 80), device=DEVICE).requires_grad_()
    target = torch.rand((0, 80), device=DEVICE)
    if focal:
        loss = sigmoid_focal_loss(input, target, reduction=reduction)
        expected = torchvision_sigmoid_focal_loss(input, target, reduction=reduction)
    else:
        loss = binary_cross_entropy_with_logits(input, target, reduction=reduction)
        expected = F.binary_cross_entropy_with_logits(input, target, reduction=reduction)
    torch.testing.assert_close(loss, expected, equal_nan=True)
    loss.sum().backward()
    assert input.grad.shape == input.shape


# Extreme and tiny values ----------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("target_kind", ["hard", "soft"])
@pytest.mark.parametrize("focal", [False, True], ids=["bce", "focal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_extreme_logits(dtype: torch.dtype, focal: bool, target_kind: str, reduction: str) -> None:
    """Logits of +-1e4 (confidently right and wrong), finite and right in every dtype.

    No 'sum': 2640 losses of 1e4 overflow fp16 in torch as well. Focal uses a fractional gamma,
    the path with logarithms (m = 0 exactly for the confidently right elements).
    """
    shape = (33, 80)
    input = (1e4 * torch.randint(0, 2, shape, device=DEVICE) * 2 - 1e4).to(dtype)
    target = random_targets(shape, target_kind, dtype)
    if focal:
        kernel, oracle, options = sigmoid_focal_loss, reference.sigmoid_focal_loss, {"gamma": 2.5}
    else:
        kernel = binary_cross_entropy_with_logits
        oracle = reference.binary_cross_entropy_with_logits
        options = {"pos_weight": random_weight((80,))}
    # The target gradient (about x times the upstream gradient, beyond 6e4) overflows fp16.
    loss = assert_matches_reference(
        kernel,
        oracle,
        input,
        target,
        target_grad=dtype != torch.float16,
        reduction=reduction,
        **options,
    )
    assert torch.isfinite(loss).all()


# Bands of logits where the loss or the gradient is as small as exp(-|x|) (BCE) or about
# exp(-2|x|) (focal with gamma = 1): near 0, then where log(1 + e) would round to 0 in fp32
# without the log1p correction (|x| > 17), up to near fp32's underflow (exp(-87)). Each band is
# compared on its own: the tolerance is relative to the band's largest value.
@pytest.mark.parametrize(
    ("focal", "band"),
    [
        (False, (-1e-3, 1e-3)),
        (False, (15.0, 25.0)),
        (False, (35.0, 45.0)),
        (False, (75.0, 85.0)),
        (True, (-1e-3, 1e-3)),
        (True, (15.0, 20.0)),
        (True, (35.0, 40.0)),
    ],
    ids=str,
)
def test_tiny_losses_are_accurate_in_fp32(focal: bool, band: tuple[float, float]) -> None:
    low, high = band
    magnitude = low + (high - low) * torch.rand(2, 500, device=DEVICE)
    # Row 0: x > 0 with t = 1; row 1: x < 0 with t = 0. Both confidently right.
    input = torch.stack([magnitude[0], -magnitude[1]])
    target = torch.stack([torch.ones(500, device=DEVICE), torch.zeros(500, device=DEVICE)])
    if focal:
        kernel, oracle, options = sigmoid_focal_loss, reference.sigmoid_focal_loss, {"gamma": 1.0}
    else:
        kernel = binary_cross_entropy_with_logits
        oracle = reference.binary_cross_entropy_with_logits
        options = {}
    for row in range(2):
        assert_matches_reference(
            kernel, oracle, input[row], target[row], target_grad=True, reduction="none", **options
        )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("gamma", [0.5, 2.7])
def test_focal_fractional_gamma_where_one_minus_p_t_is_subnormal(
    gamma: float, reduction: str
) -> None:
    """Confidently right logits with 88 < |x| < 103: 1 - p_t = sigma(-|x|) is a subnormal fp32
    number, whose reciprocal overflows. Their loss and gradients are about e^-(1 + gamma)|x|, 0
    or subnormal in fp32, and must come out so, not inf or nan. A few ordinary logits beside them
    give the tensors a representable scale."""
    magnitude = 88.0 + 15.0 * torch.rand(2, 200, device=DEVICE)
    # Row 0: x > 0 with t = 1; row 1: x < 0 with t = 0.
    input = torch.stack([magnitude[0], -magnitude[1]])
    input[:, :10] = 2 * torch.randn(2, 10, device=DEVICE)
    target = torch.stack([torch.ones(200, device=DEVICE), torch.zeros(200, device=DEVICE)])
    assert_matches_reference(
        sigmoid_focal_loss,
        reference.sigmoid_focal_loss,
        input,
        target,
        target_grad=True,
        reduction=reduction,
        gamma=gamma,
    )


# Properties ----------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_focal_with_gamma_0_and_no_alpha_is_bce(dtype: torch.dtype, reduction: str) -> None:
    input = random_logits((33, 80), dtype)
    target = random_targets((33, 80), "soft", dtype)
    bce, bce_grad, _, upstream = loss_and_gradients(
        binary_cross_entropy_with_logits, input, target, reduction=reduction
    )
    focal, focal_grad, _, _ = loss_and_gradients(
        sigmoid_focal_loss,
        input,
        target,
        upstream,
        alpha=-1.0,
        gamma=0.0,
        reduction=reduction,
    )
    assert_close(focal, bce, dtype, "loss")
    assert_close(focal_grad, bce_grad, dtype, "input gradient")


def test_mean_is_sum_over_count() -> None:
    input = random_logits((4, 3, 17, 5), torch.float32)
    target = random_targets((4, 3, 17, 5), "soft", torch.float32)
    mean = binary_cross_entropy_with_logits(input, target, reduction="mean")
    total = binary_cross_entropy_with_logits(input, target, reduction="sum")
    assert_close(mean, total / input.numel(), torch.float32, "mean against sum / numel")


# Autograd: the upstream gradient, retain_graph, no_grad -----------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_plain_backward_of_a_reduced_loss(reduction: str) -> None:
    """loss.backward() passes an upstream of exactly 1: the gradient of the forward, unscaled."""
    input = random_logits((33, 80), torch.float32).requires_grad_()
    target = random_targets((33, 80), "bool", torch.float32)
    sigmoid_focal_loss(input, target, reduction=reduction).backward()
    reference_input = input.detach().double().requires_grad_()
    reference.sigmoid_focal_loss(reference_input, target.double(), reduction=reduction).backward()
    assert_close(input.grad, reference_input.grad, torch.float32, "input gradient")


def test_none_backward_reads_an_expanded_upstream_as_one_value() -> None:
    """loss.sum().backward() hands 'none' an expanded scalar: same gradient as an explicit one."""
    input = random_logits((33, 80), torch.float32).requires_grad_()
    target = random_targets((33, 80), "soft", torch.float32)
    (3 * binary_cross_entropy_with_logits(input, target, reduction="none").sum()).backward()
    expanded_grad = input.grad
    input.grad = None
    loss = binary_cross_entropy_with_logits(input, target, reduction="none")
    loss.backward(torch.full_like(loss, 3.0))
    assert_close(expanded_grad, input.grad, torch.float32, "input gradient")


@pytest.mark.parametrize("upstream", [1.0, 2.5])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_second_backward_of_a_reduced_loss_recomputes(reduction: str, upstream: float) -> None:
    # The first backward hands out the gradients the forward pass wrote; a later one (here with
    # retain_graph, as torch.autograd.gradcheck does) recomputes them from the saved inputs.
    input = random_logits((33, 80), torch.float32).requires_grad_()
    target = random_targets((33, 80), "soft", torch.float32).requires_grad_()
    loss = binary_cross_entropy_with_logits(input, target, reduction=reduction)
    scale = torch.tensor(upstream, device=DEVICE)
    first = torch.autograd.grad(loss, (input, target), scale, retain_graph=True)
    second = torch.autograd.grad(loss, (input, target), scale)
    for name, a, b in zip(("input", "target"), first, second, strict=True):
        assert_close(b, a.double(), torch.float32, f"second {name} gradient")


def test_second_backward_of_none_recomputes() -> None:
    input = random_logits((33, 80), torch.float32).requires_grad_()
    target = random_targets((33, 80), "soft", torch.float32)
    loss = sigmoid_focal_loss(input, target, reduction="none")
    upstream = upstream_gradient(loss)
    (first,) = torch.autograd.grad(loss, input, upstream, retain_graph=True)
    (second,) = torch.autograd.grad(loss, input, upstream)
    assert torch.equal(first, second)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_double_backward_raises(reduction: str) -> None:
    """First-order gradients only: create_graph=True raises, never a silent zero second order."""
    input = random_logits((7,), torch.float32).requires_grad_()
    target = random_targets((7,), "soft", torch.float32)
    loss = binary_cross_entropy_with_logits(input, target, reduction=reduction).sum()
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        torch.autograd.grad(loss, input, create_graph=True)


def test_no_grad_forward_matches() -> None:
    input = random_logits((33, 80), torch.bfloat16).requires_grad_()
    target = random_targets((33, 80), "uint8", torch.bfloat16)
    with torch.no_grad():
        loss = binary_cross_entropy_with_logits(input, target, reduction="sum")
    assert not loss.requires_grad
    expected = reference.binary_cross_entropy_with_logits(
        input.detach().double(), target.double(), reduction="sum"
    )
    assert_close(loss, expected, torch.bfloat16, "loss")


# Modules -------------------------------------------------------------------------------------


def test_modules_match_their_functions() -> None:
    input = random_logits((33, 80), torch.float32)
    target = random_targets((33, 80), "soft", torch.float32)
    weight, pos_weight = random_weight((33, 1)), random_weight((80,))
    module = BCEWithLogitsLoss(weight, reduction="sum", pos_weight=pos_weight)
    assert_close(
        module(input, target),
        binary_cross_entropy_with_logits(
            input, target, weight, reduction="sum", pos_weight=pos_weight
        ),
        torch.float32,
        "BCEWithLogitsLoss",
    )
    focal_module = SigmoidFocalLoss(alpha=0.4, gamma=1.5, reduction="mean")
    assert_close(
        focal_module(input, target),
        sigmoid_focal_loss(input, target, 0.4, 1.5, "mean"),
        torch.float32,
        "SigmoidFocalLoss",
    )


# Bad input raises before any launch ------------------------------------------------------------


def _bad_calls() -> Iterator[tuple[str, Callable[[], object], type[Exception], str]]:
    x = random_logits((4, 5), torch.float32)
    t = random_targets((4, 5), "soft", torch.float32)
    yield "shapes", lambda: binary_cross_entropy_with_logits(x, t[:, :4]), ValueError, r"\(4, 4\)"
    yield "focal shapes", lambda: sigmoid_focal_loss(x, t.t()), ValueError, r"\(5, 4\).*\(4, 5\)"
    yield (
        "fp8 input",
        lambda: binary_cross_entropy_with_logits(x.to(torch.float8_e4m3fn), t),
        TypeError,
        "input",
    )
    yield "int input", lambda: sigmoid_focal_loss(x.long(), t), TypeError, "inputs"
    yield "int32 target", lambda: binary_cross_entropy_with_logits(x, t.int()), TypeError, "target"
    yield (
        "weight does not broadcast",
        lambda: binary_cross_entropy_with_logits(x, t, weight=random_weight((4,))),
        ValueError,
        "weight of shape",
    )
    yield (
        "weight enlarges the result",
        lambda: binary_cross_entropy_with_logits(x, t, weight=random_weight((2, 4, 5))),
        ValueError,
        "weight of shape",
    )
    yield (
        "pos_weight does not broadcast",
        lambda: binary_cross_entropy_with_logits(x, t, pos_weight=random_weight((4,))),
        ValueError,
        "pos_weight of shape",
    )
    yield (
        "integer weight",
        lambda: binary_cross_entropy_with_logits(x, t, weight=torch.ones(5, dtype=torch.long)),
        TypeError,
        "weight",
    )
    yield (
        "pos_weight on another device",
        lambda: binary_cross_entropy_with_logits(x, t, pos_weight=torch.ones(5, device="meta")),
        ValueError,
        "pos_weight is on meta",
    )
    yield (
        "input on another device",
        lambda: sigmoid_focal_loss(x.to("meta"), t.to("meta")),
        ValueError,
        "inputs is on meta",
    )
    yield (
        "weight requires grad",
        lambda: binary_cross_entropy_with_logits(x, t, weight=random_weight((5,)).requires_grad_()),
        NotImplementedError,
        "weight requires grad",
    )
    yield (
        "reduction",
        lambda: binary_cross_entropy_with_logits(x, t, None, reduction="avg"),
        ValueError,
        "avg",
    )
    yield "focal reduction", lambda: sigmoid_focal_loss(x, t, reduction="max"), ValueError, "max"
    yield "gamma < 0", lambda: sigmoid_focal_loss(x, t, gamma=-0.5), ValueError, "gamma"
    yield "gamma nan", lambda: sigmoid_focal_loss(x, t, gamma=float("nan")), ValueError, "gamma"
    yield "alpha > 1", lambda: sigmoid_focal_loss(x, t, alpha=1.5), ValueError, "alpha"
    yield "module reduction", lambda: BCEWithLogitsLoss(reduction="avg"), ValueError, "avg"
    yield "module gamma", lambda: SigmoidFocalLoss(gamma=-1.0), ValueError, "gamma"


@pytest.mark.parametrize("index", range(19))
def test_bad_input_raises_before_launch(index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = list(_bad_calls())
    assert len(cases) == 19, "keep the parametrize range equal to the number of cases"
    _, call, error, message = cases[index]

    class NoLaunch:
        def __getitem__(self, grid: object) -> None:
            raise AssertionError("the kernel was launched before the bad input was rejected")

    monkeypatch.setattr(kernel_module, "_sigmoid_loss_kernel", NoLaunch())
    with pytest.raises(error, match=message):
        call()


# Over 2^31 elements, compiled on a GPU ----------------------------------------------------------


@pytest.mark.gpu
def test_more_than_2_31_elements() -> None:
    """int64 offsets: the last rows lie past element 2^31. bf16 logits, uint8 targets, pos_weight.

    The float64 reference runs on chunks of rows: the 'mean' loss against the sum of the chunks'
    sums, its gradient and the 'none' loss on the first and the last rows.
    """
    n_classes = 1000
    n_rows = 2**31 // n_classes + 7
    input = (4 * torch.randn(n_rows, n_classes, device=DEVICE)).to(torch.bfloat16)
    target = torch.randint(0, 2, (n_rows, n_classes), device=DEVICE, dtype=torch.uint8)
    pos_weight = random_weight((n_classes,))
    assert input.numel() > 2**31
    input.requires_grad_()
    loss = binary_cross_entropy_with_logits(input, target, pos_weight=pos_weight)
    loss.backward()
    with torch.no_grad():
        elementwise = binary_cross_entropy_with_logits(
            input, target, pos_weight=pos_weight, reduction="none"
        )

    def reference_sum(rows: slice, logits: Tensor) -> Tensor:
        return reference.binary_cross_entropy_with_logits(
            logits, target[rows].double(), reduction="sum", pos_weight=pos_weight.double()
        )

    rows_per_chunk = 2**17
    expected_sum = sum(
        reference_sum(rows, input.detach()[rows].double())
        for rows in (
            slice(start, start + rows_per_chunk) for start in range(0, n_rows, rows_per_chunk)
        )
    )
    assert_close(loss, expected_sum / input.numel(), torch.bfloat16, "mean loss")
    for rows in (slice(0, 64), slice(n_rows - 64, n_rows)):
        logits = input.detach()[rows].double().requires_grad_()
        (expected_grad,) = torch.autograd.grad(reference_sum(rows, logits) / input.numel(), logits)
        assert_close(input.grad[rows], expected_grad, torch.bfloat16, f"gradient, rows {rows}")
        expected_loss = reference.binary_cross_entropy_with_logits(
            logits.detach(), target[rows].double(), reduction="none", pos_weight=pos_weight.double()
        )
        assert_close(elementwise[rows], expected_loss, torch.bfloat16, f"'none' loss, rows {rows}")


# float64: computed in float64, so that gradcheck applies ---------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_float64_matches_the_reference_and_passes_gradcheck(reduction: str) -> None:
    input = random_logits((5, 7), torch.float64)
    target = random_targets((5, 7), "soft", torch.float64)
    weight = random_weight((7,)).double()
    pos_weight = random_weight((5, 7)).double()
    cases = [
        (binary_cross_entropy_with_logits, reference.binary_cross_entropy_with_logits, {}),
        (
            binary_cross_entropy_with_logits,
            reference.binary_cross_entropy_with_logits,
            {"weight": weight, "pos_weight": pos_weight},
        ),
        (sigmoid_focal_loss, reference.sigmoid_focal_loss, {"alpha": 0.3, "gamma": 1.7}),
    ]
    for kernel, oracle, options in cases:
        actual = loss_and_gradients(
            kernel, input, target, target_grad=True, reduction=reduction, **options
        )
        expected = loss_and_gradients(
            oracle, input, target, actual[3], target_grad=True, reduction=reduction, **options
        )
        for what, a, e in zip(("loss", "input", "target"), actual, expected, strict=False):
            assert a.dtype == torch.float64
            assert_close(a, e, torch.float64, f"{kernel.__name__} {what}")
        assert torch.autograd.gradcheck(
            lambda x, t, kernel=kernel, options=options: kernel(
                x, t, reduction=reduction, **options
            ),
            (input.detach().requires_grad_(), target.detach().requires_grad_()),
            fast_mode=True,
        )


# Non-finite logits: as the reference, which is as torch (torchvision) --------------------------


# The interpreter's numpy warns about the inf - inf and 0 x inf these inputs are made of.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    ("focal", "options"),
    [
        (False, {}),
        (False, {"pos_weight": 2.0, "weight": True}),
        (True, {"alpha": 0.25, "gamma": 2.0}),
        (True, {"alpha": 0.25, "gamma": 0.0}),
        (True, {"alpha": -1.0, "gamma": 0.0}),
        (True, {"alpha": -1.0, "gamma": 1.5}),
    ],
    ids=["bce", "bce-weights", "focal", "focal-gamma0", "focal-gamma0-no-alpha", "focal-gamma1.5"],
)
def test_non_finite_logits_as_the_reference(focal: bool, options: dict, reduction: str) -> None:
    # +inf, -inf and nan against targets 0, 1 and 0.3, beside finite elements: loss, input and
    # target gradients; non-finite entries must match exactly, finite ones within fp32's tolerance.
    logits, targets = non_finite_sigmoid_case(DEVICE)
    logits, targets = logits.float(), targets.float()
    options = dict(options)
    if options.pop("weight", False):
        options["weight"] = random_weight((12,))
    if "pos_weight" in options:
        options["pos_weight"] = torch.tensor(options["pos_weight"], device=DEVICE)
    kernel = sigmoid_focal_loss if focal else binary_cross_entropy_with_logits
    oracle = reference.sigmoid_focal_loss if focal else reference.binary_cross_entropy_with_logits
    assert_matches_reference(
        kernel, oracle, logits, targets, target_grad=True, reduction=reduction, **options
    )
