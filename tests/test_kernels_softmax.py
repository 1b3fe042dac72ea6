"""kernels/softmax.py against the float64 oracle reference/softmax.py: losses and input gradients.

Runs in Triton's interpreter on the CPU (small sizes) and compiled on a GPU (the same tests, plus
the ``gpu``-marked sizes the interpreter cannot run in time). Every buffer the kernels allocate
with ``torch.empty`` starts as nan (the ``poisoned_allocations`` fixture), so an element the kernel
fails to write shows as a mismatch.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn.functional import cross_entropy as torch_cross_entropy

import lossbench.kernels.softmax as fused
from lossbench.kernels._common import INTERPRETED, KERNEL_DEVICE
from lossbench.reference import softmax as reference
from lossbench.reference.tolerance import assert_close

from .helpers import NON_FINITE_ROWS, loss_and_gradients, non_finite_softmax_case, upcast

# The interpreter evaluates masked lanes and padding rows too (with -inf logits, discarded by the
# masks), and numpy warns about the nan it computes there, and about the 1/0 = inf that makes a
# 'mean' over no counted row nan.
pytestmark = [
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
    pytest.mark.usefixtures("poisoned_allocations"),
]

DEVICE = KERNEL_DEVICE
IGNORE = -100

# 2 and 3: tiny rows, many per program; 10: not a power of two; 13: a prime (one class per
# access); 10 and 13 are held whole by each thread (up to SMALL_C classes); 33: one above that, the
# first row shared by threads; 1000: a few rows per program, 16-byte accesses; 1025: one above a
# power of two (a 2048-wide block, mostly padding).
CLASS_COUNTS = (2, 3, 10, 13, 33, 1000, 1025)


def _targets(n_rows: int, n_classes: int, *, ignored: bool, shape: tuple[int, ...] = ()):
    """Random class indices, a quarter of them (at least one) ignore_index when ``ignored``."""
    target = torch.randint(0, n_classes, shape or (n_rows,), device=DEVICE)
    if ignored:
        flat = target.view(-1)
        flat[torch.randperm(flat.numel(), device=DEVICE)[: max(1, flat.numel() // 4)]] = IGNORE
    return target


def _check_against_reference(
    kernel_fn, reference_fn, logits, target, *, upstream_is_one=False, **kwargs
) -> None:
    """Loss and d loss / d logits of ``kernel_fn`` against ``reference_fn`` in float64.

    The upstream gradient is random (``upstream_gradient``: per row for 'none', a scalar other
    than 1 for 'mean' and 'sum', which the kernel's backward must apply), or 1 if
    ``upstream_is_one``.
    """
    dtype = logits.dtype
    upstream = None
    if upstream_is_one:
        upstream = torch.ones(() if kwargs.get("reduction", "mean") != "none" else target.shape)
        upstream = upstream.to(device=logits.device, dtype=dtype)
    actual, actual_grad, _, upstream = loss_and_gradients(
        kernel_fn, logits, target, upstream, **kwargs
    )
    expected, expected_grad, _, _ = loss_and_gradients(
        reference_fn, logits.double(), target, upstream.double(), **upcast(kwargs)
    )
    assert actual.dtype == dtype
    assert_close(actual, expected, dtype, "loss")
    assert_close(actual_grad, expected_grad, dtype, "input gradient")


def _logits(*shape: int, dtype: torch.dtype = torch.float32, scale: float = 3.0) -> torch.Tensor:
    return (torch.randn(*shape, device=DEVICE) * scale).to(dtype)


# --- Cross-entropy: options, reductions, class counts ------------------------------------------

OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "ignore_index": {"ignored": True},
    "label_smoothing": {"label_smoothing": 0.2},
    "z_loss": {"z_loss_scale": 1e-2},
    "all": {"weight": True, "ignored": True, "label_smoothing": 0.3, "z_loss_scale": 1e-2},
}


def _cross_entropy_case(n_rows, n_classes, option, dtype=torch.float32):
    option = dict(OPTIONS[option])
    target = _targets(n_rows, n_classes, ignored=option.pop("ignored", False))
    if option.pop("weight", False):
        option["weight"] = (torch.rand(n_classes, device=DEVICE) + 0.1).to(dtype)
    return _logits(n_rows, n_classes, dtype=dtype), target, option


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_cross_entropy_each_option(option: str, reduction: str) -> None:
    logits, target, kwargs = _cross_entropy_case(19, 10, option)
    _check_against_reference(
        fused.cross_entropy, reference.cross_entropy, logits, target, reduction=reduction, **kwargs
    )


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("n_classes", CLASS_COUNTS)
def test_cross_entropy_class_counts(n_classes: int, reduction: str) -> None:
    # Few rows when rows are long; one row more than a power of two when they are short.
    n_rows = 33 if n_classes <= 10 else 5
    logits, target, kwargs = _cross_entropy_case(n_rows, n_classes, "all")
    _check_against_reference(
        fused.cross_entropy, reference.cross_entropy, logits, target, reduction=reduction, **kwargs
    )


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_gradient_under_an_upstream_of_one(reduction: str) -> None:
    # loss.backward() passes exactly 1, the path on which backward leaves the gradient as is.
    logits, target, kwargs = _cross_entropy_case(9, 7, "all")
    _check_against_reference(
        fused.cross_entropy,
        reference.cross_entropy,
        logits,
        target,
        reduction=reduction,
        upstream_is_one=True,
        **kwargs,
    )


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n_classes", [10, 1000])
def test_cross_entropy_half_precision(n_classes: int, dtype: torch.dtype, reduction: str) -> None:
    logits, target, kwargs = _cross_entropy_case(6, n_classes, "all", dtype)
    _check_against_reference(
        fused.cross_entropy, reference.cross_entropy, logits, target, reduction=reduction, **kwargs
    )


# --- The chunked (online softmax) path, forced at small C ---------------------------------------


@pytest.fixture
def _small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows above 16 classes take the chunked path, in chunks of 8 (so 2-6 chunks below), with
    class indices and with probability targets alike."""
    monkeypatch.setattr(fused, "MAX_FUSED_C", 16)
    monkeypatch.setattr(fused, "PROBABILITY_MAX_FUSED_C", 16)
    monkeypatch.setattr(fused, "CHUNK_C", 8)


@pytest.mark.usefixtures("_small_chunks")
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(("n_classes", "option"), [(17, "all"), (40, "plain"), (45, "all")])
def test_cross_entropy_chunked(n_classes: int, option: str, reduction: str) -> None:
    logits, target, kwargs = _cross_entropy_case(5, n_classes, option)
    _check_against_reference(
        fused.cross_entropy, reference.cross_entropy, logits, target, reduction=reduction, **kwargs
    )


@pytest.mark.usefixtures("_small_chunks")
def test_chunked_first_chunk_masked_and_max_in_last_chunk() -> None:
    # The running max starts at -inf and must survive a chunk of -inf, then move in the last chunk.
    logits = _logits(3, 30)
    logits[:, :8] = float("-inf")
    logits[:, 29] += 20.0
    target = torch.tensor([29, 10, 3], device=DEVICE)
    target[2] = 12
    _check_against_reference(
        fused.cross_entropy, reference.cross_entropy, logits, target, reduction="none"
    )
    _check_against_reference(
        fused.softmax_focal_loss, reference.softmax_focal_loss, logits, target, reduction="sum"
    )


def test_cross_entropy_50257_classes() -> None:
    # GPT-2's vocabulary: above MAX_FUSED_C, so the real chunk width; two rows keep it quick.
    logits, target, kwargs = _cross_entropy_case(2, 50257, "all")
    _check_against_reference(
        fused.cross_entropy, reference.cross_entropy, logits, target, reduction="mean", **kwargs
    )


# --- Focal loss ---------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(
    ("n_classes", "alpha", "gamma"),
    [(2, None, 2.0), (3, 0.25, 0.5), (10, "tensor", 2.0), (1025, "tensor", 1.5), (10, None, 0.0)],
)
def test_softmax_focal_loss(n_classes: int, alpha, gamma: float, reduction: str) -> None:
    if alpha == "tensor":
        alpha = torch.rand(n_classes, device=DEVICE)
    n_rows = 5 if n_classes > 10 else 21
    target = _targets(n_rows, n_classes, ignored=True)
    _check_against_reference(
        fused.softmax_focal_loss,
        reference.softmax_focal_loss,
        _logits(n_rows, n_classes),
        target,
        alpha=alpha,
        gamma=gamma,
        reduction=reduction,
    )


@pytest.mark.usefixtures("_small_chunks")
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_softmax_focal_loss_chunked(reduction: str) -> None:
    alpha = torch.rand(37, device=DEVICE)
    _check_against_reference(
        fused.softmax_focal_loss,
        reference.softmax_focal_loss,
        _logits(4, 37),
        _targets(4, 37, ignored=True),
        alpha=alpha,
        gamma=2.0,
        reduction=reduction,
    )


def test_focal_with_gamma_zero_is_cross_entropy() -> None:
    logits = _logits(12, 10)
    target = _targets(12, 10, ignored=True)
    focal = fused.softmax_focal_loss(logits, target, gamma=0.0, ignore_index=IGNORE)
    cross_entropy = fused.cross_entropy(logits, target, ignore_index=IGNORE)
    assert_close(focal, cross_entropy, torch.float32, "focal(gamma=0) vs cross-entropy")


def test_article_focal_examples() -> None:
    # The article's: probabilities [0.5, 0.3, 0.2] and [0.1, 0.8, 0.1], true class 1, gamma 2.
    probabilities = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1]], device=DEVICE)
    target = torch.tensor([1, 1], device=DEVICE)
    focal = fused.softmax_focal_loss(probabilities.log(), target, reduction="none")
    cross_entropy = fused.cross_entropy(probabilities.log(), target, reduction="none")
    expected_ce = torch.tensor([1.2040, 0.2231], device=DEVICE)
    expected_focal = torch.tensor([0.5899, 0.0089], device=DEVICE)
    assert torch.allclose(cross_entropy, expected_ce, atol=5e-5)
    assert torch.allclose(focal, expected_focal, atol=5e-5)


# --- Shapes and strides -------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_spatial_input(reduction: str) -> None:
    logits = _logits(3, 5, 4, 2)
    target = _targets(0, 5, ignored=True, shape=(3, 4, 2))
    weight = torch.rand(5, device=DEVICE)
    _check_against_reference(
        fused.cross_entropy,
        reference.cross_entropy,
        logits,
        target,
        weight=weight,
        label_smoothing=0.1,
        reduction=reduction,
    )
    _check_against_reference(
        fused.softmax_focal_loss, reference.softmax_focal_loss, logits, target, reduction=reduction
    )


def test_spatial_input_channels_last_and_sliced() -> None:
    # channels-last strides flatten into one spatial stride (a view); a sliced width does not.
    channels_last = _logits(2, 3, 4, 6).permute(0, 3, 1, 2)
    sliced = _logits(2, 6, 3, 8)[..., ::2]
    for logits in (channels_last, sliced):
        target = _targets(0, 6, ignored=True, shape=(logits.shape[0], *logits.shape[2:]))
        _check_against_reference(
            fused.cross_entropy, reference.cross_entropy, logits, target, reduction="none"
        )


@pytest.mark.parametrize("layout", ["transposed", "strided"])
def test_non_contiguous_input(layout: str) -> None:
    logits = _logits(10, 9).t() if layout == "transposed" else _logits(9, 20)[:, ::2]
    assert not logits.is_contiguous()
    target = _targets(9, 10, ignored=True)
    _check_against_reference(
        fused.cross_entropy, reference.cross_entropy, logits, target, reduction="sum"
    )


def test_unbatched_input() -> None:
    logits = _logits(7)
    target = torch.tensor(4, device=DEVICE)
    for reduction in ("none", "mean"):
        _check_against_reference(
            fused.cross_entropy, reference.cross_entropy, logits, target, reduction=reduction
        )


def test_one_class() -> None:
    logits = _logits(4, 1)
    target = torch.zeros(4, dtype=torch.long, device=DEVICE)
    _check_against_reference(
        fused.cross_entropy, reference.cross_entropy, logits, target, reduction="none"
    )


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_empty_batch(reduction: str) -> None:
    logits = _logits(0, 5).requires_grad_()
    target = torch.zeros(0, dtype=torch.long, device=DEVICE)
    actual = fused.cross_entropy(logits, target, reduction=reduction)
    expected = torch_cross_entropy(logits.detach(), target, reduction=reduction)
    assert actual.shape == expected.shape
    assert torch.equal(actual.isnan(), expected.isnan())
    assert torch.equal(actual.nan_to_num(), expected.nan_to_num())
    actual.sum().backward()
    assert logits.grad.shape == logits.shape


# --- Extreme values -----------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_logits_of_plus_minus_1e4(reduction: str) -> None:
    sign = torch.randint(0, 2, (6, 11), device=DEVICE) * 2.0 - 1.0
    logits = sign * 1e4 + torch.randn(6, 11, device=DEVICE)
    target = _targets(6, 11, ignored=False)
    _check_against_reference(
        fused.cross_entropy,
        reference.cross_entropy,
        logits,
        target,
        label_smoothing=0.1,
        reduction=reduction,
    )
    _check_against_reference(
        fused.softmax_focal_loss, reference.softmax_focal_loss, logits, target, reduction=reduction
    )


def test_logits_near_1e4_with_label_smoothing() -> None:
    # lse - x_c for logits all near 1e4: the smoothing sum must not cancel 1e4-sized terms.
    logits = 1e4 + torch.randn(5, 30, device=DEVICE)
    target = _targets(5, 30, ignored=False)
    _check_against_reference(
        fused.cross_entropy,
        reference.cross_entropy,
        logits,
        target,
        label_smoothing=0.5,
        reduction="none",
    )


def test_class_masked_with_minus_inf() -> None:
    logits = _logits(6, 12)
    logits[:, 5] = float("-inf")
    target = _targets(6, 12, ignored=True)
    target[target == 5] = 0
    for reduction in ("none", "sum"):
        _check_against_reference(
            fused.cross_entropy, reference.cross_entropy, logits, target, reduction=reduction
        )
        _check_against_reference(
            fused.softmax_focal_loss,
            reference.softmax_focal_loss,
            logits,
            target,
            gamma=0.5,
            reduction=reduction,
        )
    # With label smoothing the -inf class makes the loss inf (log p = -inf), the gradient finite.
    _check_against_reference(
        fused.cross_entropy,
        reference.cross_entropy,
        logits,
        target,
        label_smoothing=0.1,
        reduction="none",
    )


def test_only_some_classes_finite() -> None:
    logits = torch.full((4, 20), float("-inf"), device=DEVICE)
    logits[:, 3] = 1.0
    logits[:, 17] = torch.randn(4, device=DEVICE)
    target = torch.tensor([3, 17, 3, 17], device=DEVICE)
    _check_against_reference(
        fused.cross_entropy, reference.cross_entropy, logits, target, reduction="none"
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_true_class_probability_close_to_one(dtype: torch.dtype) -> None:
    # p_y = 1 - 9e-6 (every row): p_y - 1 cancels in bf16, and loses digits in fp32 unless it
    # comes from expm1; the gradient is all that small, so a normwise error shows it.
    logits = torch.zeros(4, 10, device=DEVICE)
    target = torch.randint(0, 10, (4,), device=DEVICE)
    logits[torch.arange(4), target] = 14.0
    logits = (logits + 0.05 * torch.randn(4, 10, device=DEVICE)).to(dtype)
    _check_against_reference(
        fused.cross_entropy, reference.cross_entropy, logits, target, reduction="none"
    )
    _check_against_reference(
        fused.softmax_focal_loss,
        reference.softmax_focal_loss,
        logits,
        target,
        gamma=0.5,
        reduction="sum",
    )


# --- Ignored targets ----------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
def test_all_ignored_mean_is_nan_like_torch(weighted: bool) -> None:
    logits = _logits(5, 4).requires_grad_()
    target = torch.full((5,), IGNORE, device=DEVICE)
    weight = torch.rand(4, device=DEVICE) if weighted else None
    loss = fused.cross_entropy(logits, target, weight, label_smoothing=0.1)
    expected_input = logits.detach().clone().requires_grad_()
    expected = torch_cross_entropy(expected_input, target, weight, label_smoothing=0.1)
    assert loss.isnan() and expected.isnan()
    loss.backward()
    expected.backward()
    assert torch.equal(logits.grad, expected_input.grad)  # zeros, as torch
    assert fused.softmax_focal_loss(logits, target).isnan()


def test_ignore_index_inside_class_range() -> None:
    logits = _logits(16, 6)
    target = torch.randint(0, 6, (16,), device=DEVICE)
    _check_against_reference(
        fused.cross_entropy,
        reference.cross_entropy,
        logits,
        target,
        ignore_index=2,
        label_smoothing=0.1,
        reduction="mean",
    )


# --- inplace_backward and backward twice --------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_inplace_backward_writes_gradient_over_logits(reduction: str) -> None:
    leaf = _logits(8, 10).requires_grad_()
    logits = leaf * 1.0  # a non-leaf, as a layer's output would be
    target = _targets(8, 10, ignored=True)
    loss = fused.cross_entropy(logits, target, reduction=reduction, inplace_backward=True)
    upstream = torch.rand_like(loss) + 0.5
    loss.backward(upstream)
    expected_input = leaf.detach().double().requires_grad_()
    expected = reference.cross_entropy(expected_input, target, reduction=reduction)
    assert_close(loss, expected, torch.float32, "loss")
    expected.backward(upstream.double())
    assert_close(leaf.grad, expected_input.grad, torch.float32, "input gradient")
    # The logits' storage now holds that gradient (ignored rows, once nonzero logits, are 0).
    assert_close(logits.detach(), expected_input.grad, torch.float32, "logits storage")


def test_inplace_backward_false_leaves_logits_untouched() -> None:
    for reduction in ("none", "mean"):
        logits = _logits(8, 10).requires_grad_()
        before = logits.detach().clone()
        fused.cross_entropy(
            logits, _targets(8, 10, ignored=True), reduction=reduction
        ).sum().backward()
        assert torch.equal(logits.detach(), before)


def test_inplace_backward_makes_other_saved_uses_of_the_logits_raise() -> None:
    leaf = _logits(4, 6).requires_grad_()
    logits = leaf * 1.0
    squares = (logits**2).sum()  # pow saves logits for its backward
    loss = fused.cross_entropy(logits, _targets(4, 6, ignored=False), inplace_backward=True)
    with pytest.raises(RuntimeError, match="inplace"):
        (loss + squares).backward()


@pytest.mark.parametrize("upstream", [1.0, 2.5])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_second_backward_of_a_reduced_loss_recomputes(reduction: str, upstream: float) -> None:
    # The first backward hands out the gradient the forward pass wrote (rewritten at an upstream
    # other than 1); a later one (retain_graph, as gradcheck does) computes it anew.
    logits = _logits(4, 6).requires_grad_()
    loss = fused.cross_entropy(logits, _targets(4, 6, ignored=True), reduction=reduction)
    scale = torch.tensor(upstream, device=DEVICE)
    (first,) = torch.autograd.grad(loss, logits, scale, retain_graph=True)
    (second,) = torch.autograd.grad(loss, logits, scale)
    assert_close(second, first.double(), torch.float32, "second gradient")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_second_backward_after_inplace_backward_raises(reduction: str) -> None:
    logits = _logits(4, 6).requires_grad_() * 1.0
    target = _targets(4, 6, ignored=False)
    loss = fused.cross_entropy(logits, target, reduction=reduction, inplace_backward=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match=r"backward called twice.*inplace_backward"):
        loss.backward()


def test_second_backward_of_none_recomputes() -> None:
    logits = _logits(4, 6).requires_grad_()
    loss = fused.cross_entropy(logits, _targets(4, 6, ignored=True), reduction="none")
    loss.sum().backward(retain_graph=True)
    first = logits.grad.clone()
    loss.sum().backward()
    assert_close(logits.grad, 2 * first, torch.float32, "accumulated gradient")
    inplace_logits = _logits(4, 6).requires_grad_() * 1.0
    loss = fused.cross_entropy(
        inplace_logits, _targets(4, 6, ignored=False), reduction="none", inplace_backward=True
    )
    loss.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward called twice"):
        loss.sum().backward()


def test_modules_match_functions() -> None:
    logits = _logits(6, 5)
    target = _targets(6, 5, ignored=True)
    weight = torch.rand(5, device=DEVICE)
    module = fused.CrossEntropyLoss(weight, label_smoothing=0.1, z_loss_scale=1e-3)
    function = fused.cross_entropy(logits, target, weight, label_smoothing=0.1, z_loss_scale=1e-3)
    assert torch.equal(module(logits, target), function)
    focal_module = fused.SoftmaxFocalLoss(alpha=weight, gamma=1.5, reduction="sum")
    focal = fused.softmax_focal_loss(logits, target, weight, 1.5, reduction="sum")
    assert torch.equal(focal_module(logits, target), focal)


def test_class_probability_target_matches_torch() -> None:
    # Checked against torch's own cross_entropy in float64: the kernels' path for probability
    # targets must not be measured against itself.
    logits = _logits(5, 4)
    probabilities = torch.softmax(torch.randn(5, 4, device=DEVICE), dim=1)
    _check_against_reference(
        fused.cross_entropy,
        torch_cross_entropy,
        logits,
        probabilities,
        label_smoothing=0.1,
        reduction="mean",
    )


# --- Probability targets: their own kernel --------------------------------------------------------


def _probabilities(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Soft labels: a softmax over the class dimension of random scores (never one-hot)."""
    dim = 0 if len(shape) == 1 else 1
    return torch.softmax(2 * torch.randn(*shape, device=DEVICE), dim=dim).to(dtype)


def _check_probabilities(
    logits: torch.Tensor, probabilities: torch.Tensor, *, target_grad: bool = True, **kwargs
) -> None:
    """Loss, d loss / d logits and d loss / d target against the float64 reference, under a
    random upstream gradient; each in the tolerance of its own dtype."""
    actual = loss_and_gradients(
        fused.cross_entropy, logits, probabilities, target_grad=target_grad, **kwargs
    )
    expected = loss_and_gradients(
        reference.cross_entropy,
        logits.double(),
        probabilities.double(),
        actual[3].double(),
        target_grad=target_grad,
        **upcast(kwargs),
    )
    result_dtype = torch.promote_types(logits.dtype, probabilities.dtype)
    assert actual[0].dtype == result_dtype
    assert_close(actual[0], expected[0], result_dtype, "loss")
    assert_close(actual[1], expected[1], logits.dtype, "input gradient")
    if target_grad:
        assert_close(actual[2], expected[2], probabilities.dtype, "target gradient")


PROBABILITY_OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "label_smoothing": {"label_smoothing": 0.2},
    "all": {"weight": True, "label_smoothing": 0.3},
}


def _probability_case(shape: tuple[int, ...], option: str, dtype=torch.float32):
    options = dict(PROBABILITY_OPTIONS[option])
    n_classes = shape[0 if len(shape) == 1 else 1]
    if options.pop("weight", False):
        options["weight"] = (torch.rand(n_classes, device=DEVICE) + 0.1).to(dtype)
    return _logits(*shape, dtype=dtype), _probabilities(*shape, dtype=dtype), options


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("option", list(PROBABILITY_OPTIONS))
def test_probability_targets_each_option(option: str, reduction: str) -> None:
    logits, probabilities, options = _probability_case((19, 10), option)
    _check_probabilities(logits, probabilities, reduction=reduction, **options)


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("n_classes", CLASS_COUNTS)
def test_probability_targets_class_counts(n_classes: int, reduction: str) -> None:
    n_rows = 33 if n_classes <= 10 else 5
    logits, probabilities, options = _probability_case((n_rows, n_classes), "all")
    _check_probabilities(logits, probabilities, reduction=reduction, **options)


@pytest.mark.usefixtures("_small_chunks")
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(("n_classes", "option"), [(17, "all"), (45, "plain"), (45, "all")])
def test_probability_targets_chunked(n_classes: int, option: str, reduction: str) -> None:
    logits, probabilities, options = _probability_case((5, n_classes), option)
    _check_probabilities(logits, probabilities, reduction=reduction, **options)


def test_probability_targets_50257_classes() -> None:
    # Above PROBABILITY_MAX_FUSED_C: the real chunk width, the row statistics saved.
    logits, probabilities, options = _probability_case((2, 50257), "all")
    _check_probabilities(logits, probabilities, reduction="none", **options)


@pytest.mark.parametrize(
    ("logits_dtype", "target_dtype"),
    [
        (torch.bfloat16, torch.bfloat16),
        (torch.float16, torch.float16),
        (torch.bfloat16, torch.float32),  # torch promotes: a float32 loss, each gradient its own
    ],
    ids=str,
)
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_probability_targets_half_precision(
    logits_dtype: torch.dtype, target_dtype: torch.dtype, reduction: str
) -> None:
    logits, _, options = _probability_case((6, 1000), "all", logits_dtype)
    probabilities = _probabilities(6, 1000, dtype=target_dtype)
    _check_probabilities(logits, probabilities, reduction=reduction, **options)


@pytest.mark.parametrize("shape", [(3, 5, 4, 2), (7,)], ids=["N,C,H,W", "C"])
def test_probability_targets_spatial_and_unbatched(shape: tuple[int, ...]) -> None:
    logits, probabilities, options = _probability_case(shape, "all")
    for reduction in ("none", "mean"):
        _check_probabilities(logits, probabilities, reduction=reduction, **options)


def test_probability_targets_without_target_gradient() -> None:
    logits, probabilities, options = _probability_case((9, 12), "all")
    _check_probabilities(logits, probabilities, target_grad=False, reduction="sum", **options)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_probability_targets_inplace_backward(reduction: str) -> None:
    leaf = _logits(8, 10).requires_grad_()
    logits = leaf * 1.0
    probabilities = _probabilities(8, 10).requires_grad_()
    loss = fused.cross_entropy(logits, probabilities, reduction=reduction, inplace_backward=True)
    upstream = torch.rand_like(loss) + 0.5
    loss.backward(upstream)
    expected_input = leaf.detach().double().requires_grad_()
    expected_target = probabilities.detach().double().requires_grad_()
    expected = reference.cross_entropy(expected_input, expected_target, reduction=reduction)
    expected.backward(upstream.double())
    assert_close(loss, expected, torch.float32, "loss")
    assert_close(leaf.grad, expected_input.grad, torch.float32, "input gradient")
    assert_close(probabilities.grad, expected_target.grad, torch.float32, "target gradient")
    assert_close(logits.detach(), expected_input.grad, torch.float32, "logits storage")


def test_probability_targets_refuse_what_torch_refuses() -> None:
    logits = _logits(5, 4)
    probabilities = _probabilities(5, 4)
    with pytest.raises(ValueError, match="ignore_index is not supported for floating point"):
        fused.cross_entropy(logits, probabilities, ignore_index=1)
    assert torch.equal(
        fused.cross_entropy(logits, probabilities, ignore_index=-1),
        fused.cross_entropy(logits, probabilities),
    )
    with pytest.raises(ValueError, match="class-index targets"):
        fused.cross_entropy(logits, probabilities, z_loss_scale=1e-3)
    with pytest.raises(TypeError, match="probabilities"):
        fused.cross_entropy(logits, probabilities.long())


# --- Labels out of range, bad input -------------------------------------------------------------


@pytest.mark.parametrize("bad_label", [10, -1])
def test_label_out_of_range(bad_label: int) -> None:
    logits = _logits(5, 10).requires_grad_()
    target = _targets(5, 10, ignored=False)
    target[2] = bad_label
    if INTERPRETED:
        with pytest.raises(ValueError, match=f"class index {bad_label}"):
            fused.cross_entropy(logits, target)
        with pytest.raises(ValueError, match=f"class index {bad_label}"):
            fused.softmax_focal_loss(logits, target)
        return
    # On a GPU: no host sync to check, so the row's loss and gradient are nan, the others not.
    loss = fused.cross_entropy(logits, target, reduction="none")
    loss.sum().backward()
    assert loss[2].isnan() and not loss[[0, 1, 3, 4]].isnan().any()
    assert logits.grad[2].isnan().all() and not logits.grad[[0, 1, 3, 4]].isnan().any()
    assert fused.cross_entropy(logits, target).isnan()


def _ones(n: int, dtype: torch.dtype = torch.float32, device: str = DEVICE) -> torch.Tensor:
    return torch.ones(n, dtype=dtype, device=device)


# name: (exception, message pattern, call on logits x (6, 5) requiring grad and targets t (6,))
BAD_CALLS = {
    "integer logits": (TypeError, "floating", lambda x, t: fused.cross_entropy(x.long(), t)),
    "float8 logits": (
        TypeError,
        "fp32, fp16, bf16 or fp64",
        lambda x, t: fused.cross_entropy(x.detach().to(torch.float8_e4m3fn), t),
    ),
    "float target": (TypeError, "integer dtype", lambda x, t: fused.cross_entropy(x, t.float())),
    "target shape": (
        ValueError,
        r"\(6,\).*\(6, 5\).*\(5,\)",
        lambda x, t: fused.cross_entropy(x, t[:5]),
    ),
    "weight shape": (ValueError, r"shape \(5,\)", lambda x, t: fused.cross_entropy(x, t, _ones(4))),
    "weight dtype": (
        TypeError,
        "dtype",
        lambda x, t: fused.cross_entropy(x, t, _ones(5, torch.float16)),
    ),
    "weight device": (
        ValueError,
        "weight is on meta",
        lambda x, t: fused.cross_entropy(x, t, _ones(5, device="meta")),
    ),
    "weight requiring grad": (
        NotImplementedError,
        "weight requires grad",
        lambda x, t: fused.cross_entropy(x, t, _ones(5).requires_grad_()),
    ),
    "alpha requiring grad": (
        NotImplementedError,
        "alpha requires grad",
        lambda x, t: fused.softmax_focal_loss(x, t, _ones(5).requires_grad_()),
    ),
    "reduction": (ValueError, "reduction", lambda x, t: fused.cross_entropy(x, t, reduction="avg")),
    "label_smoothing": (
        ValueError,
        "label_smoothing",
        lambda x, t: fused.cross_entropy(x, t, label_smoothing=1.5),
    ),
    "z_loss_scale": (
        ValueError,
        "z_loss_scale",
        lambda x, t: fused.cross_entropy(x, t, z_loss_scale=-1.0),
    ),
    "no classes": (ValueError, "at least one class", lambda x, t: fused.cross_entropy(x[:, :0], t)),
    "gamma": (ValueError, "gamma", lambda x, t: fused.softmax_focal_loss(x, t, gamma=-1.0)),
    "alpha": (ValueError, "alpha", lambda x, t: fused.softmax_focal_loss(x, t, alpha=-0.5)),
    "alpha shape": (ValueError, "alpha", lambda x, t: fused.softmax_focal_loss(x, t, _ones(3))),
    "focal reduction": (
        ValueError,
        "reduction",
        lambda x, t: fused.softmax_focal_loss(x, t, reduction="max"),
    ),
    "inplace non-contiguous": (
        ValueError,
        "contiguous",
        lambda x, t: fused.cross_entropy((x * 1.0).t().contiguous().t(), t, inplace_backward=True),
    ),
    "inplace leaf": (
        ValueError,
        "leaf",
        lambda x, t: fused.cross_entropy(x, t, inplace_backward=True),
    ),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_raises_before_launch(case: str) -> None:
    error, message, call = BAD_CALLS[case]
    logits = _logits(6, 5).requires_grad_()
    target = _targets(6, 5, ignored=False)
    with pytest.raises(error, match=message):
        call(logits, target)


def test_input_off_the_kernel_device_raises() -> None:
    with pytest.raises(ValueError, match="input is on meta"):
        fused.cross_entropy(
            torch.empty(3, 4, device="meta"), torch.zeros(3, dtype=torch.long, device="meta")
        )


@pytest.mark.skipif(not INTERPRETED, reason="alpha entries are checked on the CPU only")
@pytest.mark.parametrize("bad_entry", [-0.1, 1.5, float("nan")])
def test_alpha_entry_outside_0_1_raises_on_cpu(bad_entry: float) -> None:
    alpha = torch.tensor([0.5, bad_entry, 0.2], device=DEVICE)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        fused.softmax_focal_loss(_logits(4, 3), _targets(4, 3, ignored=False), alpha)


# --- GPU-only sizes -----------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("n_classes", [16384, 65536])  # the fused and the chunked path
def test_more_than_2_31_elements_bf16(n_classes: int) -> None:
    # N x C just above 2^31: int32 offsets would wrap in the last rows, which are checked here
    # (every row's gradient depends on its own row alone under 'sum').
    n_rows = 2**31 // n_classes + 2
    logits = torch.randn(n_rows, n_classes, device=DEVICE, dtype=torch.bfloat16)
    target = torch.randint(0, n_classes, (n_rows,), device=DEVICE)
    logits.requires_grad_()
    fused.cross_entropy(logits, target, reduction="sum").backward()
    with torch.no_grad():
        losses = fused.cross_entropy(logits, target, reduction="none")
    tail = slice(n_rows - 3, n_rows)
    expected_input = logits.detach()[tail].double().requires_grad_()
    expected = reference.cross_entropy(expected_input, target[tail], reduction="none")
    expected.sum().backward()
    assert_close(losses[tail], expected, torch.bfloat16, "loss of the last rows")
    assert_close(logits.grad[tail], expected_input.grad, torch.bfloat16, "gradient, last rows")


@pytest.mark.gpu
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_262144_classes_bf16(reduction: str) -> None:
    logits, target, kwargs = _cross_entropy_case(8, 262144, "all", torch.bfloat16)
    _check_against_reference(
        fused.cross_entropy, reference.cross_entropy, logits, target, reduction=reduction, **kwargs
    )
    _check_against_reference(
        fused.softmax_focal_loss,
        reference.softmax_focal_loss,
        logits,
        target,
        alpha=kwargs["weight"],
        reduction=reduction,
    )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("focal", [False, True])
def test_no_grad_writes_no_gradient(
    monkeypatch: pytest.MonkeyPatch, reduction: str, focal: bool
) -> None:
    # Under torch.no_grad() autograd wants nothing, even from logits that require grad: the
    # kernel must read the logits only, and inplace_backward must leave them as they were.
    launches = []
    launch = fused._launch
    monkeypatch.setattr(fused, "_launch", lambda *a, **k: launches.append(k) or launch(*a, **k))
    logits = _logits(6, 5).requires_grad_() * 1.0  # not a leaf: inplace_backward may take it
    target = _targets(6, 5, ignored=True)
    before = logits.detach().clone()
    with torch.no_grad():
        if focal:
            loss = fused.softmax_focal_loss(logits, target, reduction=reduction)
            expected = reference.softmax_focal_loss(logits, target, reduction=reduction)
        else:
            loss = fused.cross_entropy(logits, target, reduction=reduction, inplace_backward=True)
            expected = reference.cross_entropy(logits, target, reduction=reduction)
    assert torch.equal(logits.detach(), before)
    assert [launch_kwargs.get("grad") for launch_kwargs in launches] == [None]
    assert_close(loss, expected.double(), torch.float32, "loss under no_grad")


# --- float64: computed in float64, so that gradcheck applies --------------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_float64_matches_the_reference_and_passes_gradcheck(reduction: str) -> None:
    # Every path in float64: cross-entropy with every option, focal, probability targets (both
    # gradients). gradcheck's finite differences need a float64 computation to agree with.
    logits, target, options = _cross_entropy_case(4, 6, "all", torch.float64)
    _check_against_reference(
        fused.cross_entropy, reference.cross_entropy, logits, target, reduction=reduction, **options
    )
    weight = options["weight"]
    assert torch.autograd.gradcheck(
        lambda x: fused.cross_entropy(x, target, reduction=reduction, **options),
        (logits.detach().requires_grad_(),),
        fast_mode=True,
    )
    assert torch.autograd.gradcheck(
        lambda x: fused.softmax_focal_loss(x, target, weight / 2, 1.5, IGNORE, reduction),
        (logits.detach().requires_grad_(),),
        fast_mode=True,
    )
    probabilities = _probabilities(4, 6, dtype=torch.float64)
    _check_probabilities(logits, probabilities, reduction=reduction, weight=weight)
    assert torch.autograd.gradcheck(
        lambda x, q: fused.cross_entropy(x, q, weight, reduction=reduction, label_smoothing=0.1),
        (logits.detach().requires_grad_(), probabilities.requires_grad_()),
        fast_mode=True,
    )


@pytest.mark.usefixtures("_small_chunks")
def test_float64_chunked() -> None:
    logits, target, options = _cross_entropy_case(3, 37, "all", torch.float64)
    for reduction in ("none", "mean"):
        _check_against_reference(
            fused.cross_entropy,
            reference.cross_entropy,
            logits,
            target,
            reduction=reduction,
            **options,
        )
    _check_probabilities(logits, _probabilities(3, 37, dtype=torch.float64), reduction="sum")


# --- Class indices of any integer dtype -----------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int16])
def test_class_indices_of_any_integer_dtype(dtype: torch.dtype) -> None:
    # torch takes int64 and uint8 ("Long or Byte"); the kernels read any integer dtype alike.
    logits = _logits(9, 10)
    target = _targets(9, 10, ignored=False)
    for loss in (fused.cross_entropy, fused.softmax_focal_loss):
        assert torch.equal(loss(logits, target.to(dtype)), loss(logits, target))


# --- Non-finite logits: as the reference, which is as torch ---------------------------------------


@pytest.mark.parametrize("option", ["plain", "weight", "label_smoothing"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("case", list(NON_FINITE_ROWS))
def test_non_finite_logits_as_the_reference(case: str, reduction: str, option: str) -> None:
    # Each case's row beside finite rows: the non-finite entries must match exactly (nan for
    # nan, the same infinity), the finite ones within fp32's tolerance.
    logits, target = non_finite_softmax_case(case, DEVICE)
    logits = logits.float()
    options = {}
    if option == "weight":
        options["weight"] = torch.rand(4, device=DEVICE) + 0.2
    if option == "label_smoothing":
        options["label_smoothing"] = 0.2
    _check_against_reference(
        fused.cross_entropy, reference.cross_entropy, logits, target, reduction=reduction, **options
    )
    alpha = torch.rand(4, device=DEVICE)
    for gamma in (0.0, 2.0):
        _check_against_reference(
            fused.softmax_focal_loss,
            reference.softmax_focal_loss,
            logits,
            target,
            alpha=alpha,
            gamma=gamma,
            reduction=reduction,
        )


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("case", [name for name in NON_FINITE_ROWS if "ignored" not in name])
def test_non_finite_logits_with_probability_targets_as_the_reference(
    case: str, reduction: str
) -> None:
    logits, _ = non_finite_softmax_case(case, DEVICE)
    probabilities = _probabilities(3, 4)
    probabilities[0, 0] = 0.0  # no mass on the class the case makes non-finite: torch's nan
    _check_probabilities(logits.float(), probabilities, reduction=reduction)
    _check_probabilities(logits.float(), _probabilities(3, 4), reduction=reduction)


# --- Second-order gradients: refused, never silently dropped --------------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("loss", ["cross_entropy", "focal", "probabilities"])
def test_create_graph_raises(loss: str, reduction: str) -> None:
    # A gradient penalty differentiates the gradient again; the kernels' gradients have no graph,
    # so a second-order term through them would vanish without a word. They raise instead.
    logits = _logits(5, 4).requires_grad_()
    if loss == "probabilities":
        value = fused.cross_entropy(logits, _probabilities(5, 4), reduction=reduction)
    elif loss == "focal":
        value = fused.softmax_focal_loss(logits, _targets(5, 4, ignored=False), reduction=reduction)
    else:
        value = fused.cross_entropy(logits, _targets(5, 4, ignored=False), reduction=reduction)
    with pytest.raises(RuntimeError, match=r"first-order gradients only.*reference.softmax"):
        torch.autograd.grad(value.sum(), logits, create_graph=True)


# --- The interpreter prints no warning for finite inputs ------------------------------------------


def test_no_numpy_warning_for_finite_inputs() -> None:
    # Masked lanes and padding rows (7 rows in a program of 8) once made 0 x inf in numpy with
    # label smoothing and a weight; every option, reduction and target kind now runs clean.
    logits = _logits(7, 10).requires_grad_()
    target = _targets(7, 10, ignored=True)
    weight = torch.rand(10, device=DEVICE)
    probabilities = _probabilities(7, 10).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for reduction in ("none", "mean", "sum"):
            for value in (
                fused.cross_entropy(
                    logits, target, weight, reduction=reduction, label_smoothing=0.1, z_loss_scale=1
                ),
                fused.softmax_focal_loss(logits, target, weight, 1.5, IGNORE, reduction),
                fused.cross_entropy(
                    logits, probabilities, weight, reduction=reduction, label_smoothing=0.1
                ),
            ):
                value.backward(torch.full_like(value, 1.5))
