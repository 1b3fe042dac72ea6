"""kernels/linear.py against the float64 oracle reference/linear.py: the loss and the gradients of
input, linear_weight and linear_bias.

Runs in Triton's interpreter on the CPU (small sizes) and compiled on a GPU. Buffers the kernels
allocate with ``torch.empty`` start as nan (``poisoned_allocations``), so an element the kernels
fail to write shows. Sizes are chosen against the tiles (``kernels.linear._FORWARD_TILES``; bf16:
128 rows x 64 classes x 64 features; fp32: 64 x 64 x 16 forward, x 32 backward): V = 200 is three
full class blocks and a partial one, so the forward splits the classes four ways under the
interpreter (its 4 "SMs" want 8 programs) and merges them; D = 100 ends in a partial step; N = 37
leaves most of a row block as padding.
"""

from __future__ import annotations

import types

import pytest
import torch

import lossbench.kernels.linear as fused
from lossbench.kernels._common import INTERPRETED, KERNEL_DEVICE
from lossbench.reference import linear as reference
from lossbench.reference.tolerance import assert_close, relative_error

from .helpers import loss_and_named_gradients, upcast

# The interpreter evaluates padding rows and classes too (inf x 0 there, discarded by tl.where).
pytestmark = [
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.usefixtures("poisoned_allocations"),
]

DEVICE = KERNEL_DEVICE
IGNORE = -100
N_ROWS, N_FEATURES, N_CLASSES = 37, 100, 200

OPTIONS = {
    "plain": {},
    "bias": {"bias": True},
    "weight": {"weight": True},
    "ignore_index": {"ignored": True},
    "label_smoothing": {"label_smoothing": 0.2},
    "z_loss": {"z_loss_scale": 1e-2},
    "softcap": {"softcap": 2.0},
    "all": {
        "bias": True,
        "weight": True,
        "ignored": True,
        "label_smoothing": 0.2,
        "z_loss_scale": 1e-2,
        "softcap": 2.0,
    },
}


def _case(
    input_shape: tuple[int, ...] = (N_ROWS, N_FEATURES),
    n_classes: int = N_CLASSES,
    option: str = "all",
    dtype: torch.dtype = torch.float32,
) -> tuple[dict[str, torch.Tensor | None], torch.Tensor, dict[str, object]]:
    """Fresh hidden states, classifier and bias, targets and options, in ``dtype``.

    Weights are scaled by 3 / sqrt(D) so that logits spread over a few units: rows from easy
    (p_y near 1) to hard.
    """
    option = dict(OPTIONS[option])
    n_features = input_shape[-1]
    scale = 3.0 / n_features**0.5
    tensors: dict[str, torch.Tensor | None] = {
        "input": torch.randn(input_shape, device=DEVICE).to(dtype),
        "linear_weight": (scale * torch.randn(n_classes, n_features, device=DEVICE)).to(dtype),
        "linear_bias": None,
    }
    if option.pop("bias", False):
        tensors["linear_bias"] = torch.randn(n_classes, device=DEVICE).to(dtype)
    target = torch.randint(0, n_classes, input_shape[:-1], device=DEVICE)
    if option.pop("ignored", False):
        flat = target.view(-1)
        flat[torch.randperm(flat.numel(), device=DEVICE)[: max(1, flat.numel() // 4)]] = IGNORE
    if option.pop("weight", False):
        option["weight"] = (torch.rand(n_classes, device=DEVICE) + 0.1).to(dtype)
    return tensors, target, option


def _check(tensors, target, upstream_is_one: bool = False, **options) -> None:
    """Loss and every gradient of the kernel against the float64 reference on the same values.

    The upstream gradient is random (per row for 'none', a scalar other than 1 otherwise), or 1.
    """
    dtype = tensors["input"].dtype
    upstream = None
    if upstream_is_one:
        shape = target.shape if options.get("reduction", "mean") == "none" else ()
        upstream = torch.ones(shape, device=DEVICE, dtype=dtype)
    actual, actual_grads, upstream = loss_and_named_gradients(
        fused.linear_cross_entropy, tensors, upstream, target=target, **options
    )
    reference_options = {name: value for name, value in options.items() if name != "filter_eps"}
    expected, expected_grads, _ = loss_and_named_gradients(
        reference.linear_cross_entropy,
        upcast(tensors),
        upstream.double(),
        target=target,
        **upcast(reference_options),
    )
    assert actual.dtype == dtype
    assert actual.shape == expected.shape
    assert_close(actual, expected, dtype, "loss")
    assert actual_grads.keys() == expected_grads.keys()
    for name, gradient in actual_grads.items():
        assert gradient.dtype == dtype and gradient.shape == tensors[name].shape
        assert_close(gradient, expected_grads[name], dtype, f"gradient of {name}")


# --- Options, reductions, dtypes -----------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_each_option_fp32(option: str, reduction: str) -> None:
    tensors, target, options = _case(option=option)
    _check(tensors, target, reduction=reduction, **options)


@pytest.mark.parametrize(
    ("dtype", "option", "reduction"),
    [
        (torch.bfloat16, "all", "none"),
        (torch.bfloat16, "all", "mean"),
        (torch.bfloat16, "all", "sum"),
        (torch.bfloat16, "plain", "mean"),
        (torch.float16, "all", "mean"),
    ],
)
def test_half_precision(dtype: torch.dtype, option: str, reduction: str) -> None:
    tensors, target, options = _case(option=option, dtype=dtype)
    _check(tensors, target, reduction=reduction, **options)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_upstream_gradient_of_one(reduction: str) -> None:
    tensors, target, options = _case()
    _check(tensors, target, upstream_is_one=True, reduction=reduction, **options)


# --- Shapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n_features", [1, 64, 100])
def test_feature_counts(n_features: int, dtype: torch.dtype) -> None:
    # 1: a single feature, padded to one tl.dot step; 64: exactly one bf16 step, two fp32 steps;
    # 100: a partial last step.
    tensors, target, options = _case((N_ROWS, n_features), option="all", dtype=dtype)
    _check(tensors, target, reduction="mean", **options)


@pytest.mark.parametrize(
    "n_classes",
    [1, 10, 64, 65],  # one class (loss 0), fewer than a block, exactly one block, one above
)
def test_class_counts(n_classes: int) -> None:
    tensors, target, options = _case(n_classes=n_classes, option="all")
    _check(tensors, target, reduction="sum", **options)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_batch_time_input(reduction: str) -> None:
    # (B, T, D) hidden states, as a language model's; a transposed view cannot merge B and T into
    # one stride, so it is copied: the copy is what the kernels see.
    tensors, target, options = _case((3, 5, N_FEATURES), option="all", dtype=torch.bfloat16)
    _check(tensors, target, reduction=reduction, **options)
    transposed = tensors["input"].transpose(0, 1)
    tensors["input"] = transposed
    _check(tensors, target.transpose(0, 1), reduction=reduction, **options)


def test_unbatched_input() -> None:
    tensors, target, options = _case((N_FEATURES,), option="bias")
    _check(tensors, target, reduction="none", **options)
    _check(tensors, target, reduction="mean", **options)


def test_several_row_blocks_bf16() -> None:
    # 130 rows: a full 128-row block and two rows of the next; one row ignored in each block.
    tensors, target, options = _case((130, 64), option="all", dtype=torch.bfloat16)
    target[0] = target[129] = IGNORE
    _check(tensors, target, reduction="mean", **options)


def test_non_contiguous_weight_and_input() -> None:
    tensors, target, options = _case(option="bias")
    # Column-major classifier (a transposed (D, V) tensor) and every other row of the input.
    tensors["linear_weight"] = tensors["linear_weight"].t().contiguous().t()
    tensors["input"] = torch.randn(2 * N_ROWS, N_FEATURES, device=DEVICE)[::2]
    _check(tensors, target, reduction="sum", **options)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_empty_batch(dtype: torch.dtype) -> None:
    tensors, target, _ = _case((0, N_FEATURES), option="bias", dtype=dtype)
    for reduction, expected in (("sum", 0.0), ("mean", float("nan"))):
        loss = fused.linear_cross_entropy(
            tensors["input"], tensors["linear_weight"], target, reduction=reduction
        )
        torch.testing.assert_close(
            loss, torch.tensor(expected, device=DEVICE, dtype=dtype), equal_nan=True
        )
    _check(tensors, target, reduction="sum")


# --- The backward's weight slabs ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_weight_gradient_in_slabs(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype) -> None:
    # One class block per slab of the fp32 d W accumulator: four slabs for 200 classes (bf16);
    # fp32 weights accumulate in their own gradient, in one pass.
    monkeypatch.setattr(fused, "WEIGHT_SLAB_BYTES", 1)
    assert fused.weight_slab_classes(N_CLASSES, N_FEATURES) == fused._BACKWARD_TILES[2].block_v
    tensors, target, options = _case(option="all", dtype=dtype)
    _check(tensors, target, reduction="mean", **options)


def test_weight_slab_size() -> None:
    block_v = fused._BACKWARD_TILES[2].block_v
    slab = fused.weight_slab_classes(256000, 2304)
    assert slab % block_v == 0 and slab * 2304 * 4 <= fused.WEIGHT_SLAB_BYTES
    assert fused.weight_slab_classes(10, 2304) == 10  # never more than every class
    assert fused.weight_slab_classes(10**6, 10**6) == block_v  # at least one block


@pytest.mark.parametrize(
    "wanted",
    [("input",), ("linear_weight",), ("linear_bias",), ("input", "linear_bias")],
    ids="+".join,
)
def test_some_gradients_only(wanted: tuple[str, ...]) -> None:
    # A frozen classifier (fine-tuning below it) or a frozen body: only the asked-for gradients.
    tensors, target, options = _case(option="all", dtype=torch.bfloat16)
    leaves = {
        name: tensor.detach().requires_grad_(name in wanted) for name, tensor in tensors.items()
    }
    loss = fused.linear_cross_entropy(
        leaves["input"],
        leaves["linear_weight"],
        target,
        linear_bias=leaves["linear_bias"],
        **options,
    )
    grads = torch.autograd.grad(loss, [leaves[name] for name in wanted])
    expected, expected_grads, _ = loss_and_named_gradients(
        reference.linear_cross_entropy,
        upcast(tensors),
        torch.ones((), dtype=torch.float64, device=DEVICE),
        target=target,
        **upcast(options),
    )
    assert_close(loss, expected, torch.bfloat16, "loss")
    for name, grad in zip(wanted, grads, strict=True):
        assert_close(grad, expected_grads[name], torch.bfloat16, f"gradient of {name}")


def test_no_grad_keeps_nothing_for_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    kept = []
    forward = fused._launch_forward
    monkeypatch.setattr(
        fused, "_launch_forward", lambda *a: kept.append(a[-2]) or forward(*a)
    )  # row_stats
    tensors, target, options = _case(option="all")
    with torch.no_grad():
        loss = fused.linear_cross_entropy(
            tensors["input"].requires_grad_(),
            tensors["linear_weight"],
            target,
            linear_bias=tensors["linear_bias"],
            **options,
        )
    assert kept == [None] and not loss.requires_grad
    expected = reference.linear_cross_entropy(**upcast(tensors), target=target, **upcast(options))
    assert_close(loss, expected, torch.float32, "loss under no_grad")


def test_second_backward_recomputes() -> None:
    tensors, target, _ = _case(option="bias")
    input = tensors["input"].requires_grad_()
    loss = fused.linear_cross_entropy(
        input, tensors["linear_weight"], target, linear_bias=tensors["linear_bias"]
    )
    (first,) = torch.autograd.grad(loss, input, retain_graph=True)
    (second,) = torch.autograd.grad(loss, input)
    torch.testing.assert_close(first, second)


# --- Extreme values ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_true_class_probability_close_to_one(dtype: torch.dtype) -> None:
    # The target's logit 25 above every other: p_y = 1 - ~2e-9 x V. The loss (~1e-8 per row)
    # comes from log1p(rest), never from a 1 + rest rounded to 1, and must keep its digits.
    tensors, target, _ = _case(option="bias", dtype=dtype)
    bias = torch.zeros(N_CLASSES, device=DEVICE)
    bias[target] = 25.0
    tensors["linear_bias"] = bias.to(dtype)
    tensors["linear_weight"] = (1e-3 * tensors["linear_weight"].float()).to(dtype)
    _check(tensors, target, reduction="none")


def test_huge_logits_with_softcap() -> None:
    # Logits of order 300, capped at 30 (Gemma 2's final soft-cap): most saturate, with a
    # gradient through the cap near 0. (At 1e4 the fp32 rounding of the logits themselves,
    # ~1e-3 absolute, moves the few unsaturated gradients by more than fp32's 1e-5 tolerance:
    # a property of fp32 arithmetic, which torch's fp32 linear shares.)
    tensors, target, _ = _case(option="bias")
    tensors["linear_weight"] = 1e2 * tensors["linear_weight"]
    _check(tensors, target, reduction="mean", softcap=30.0)


def test_all_ignored_mean_is_nan_like_torch() -> None:
    tensors, target, options = _case(option="weight")
    target[:] = IGNORE
    _check(tensors, target, reduction="mean", **options)


def test_ignore_index_inside_class_range() -> None:
    tensors, target, options = _case(option="weight")
    target[::3] = 5
    _check(tensors, target, reduction="mean", ignore_index=5, **options)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gradient_precision_input_is_normwise_close(dtype: torch.dtype) -> None:
    # dz rounded once to the input dtype, as torch's own 16-bit logit gradient: within the
    # normwise tolerance (what that mode promises), not checked entry by entry.
    from lossbench.reference.tolerance import relative_error, tolerance

    tensors, target, options = _case(option="all", dtype=dtype)
    actual, actual_grads, upstream = loss_and_named_gradients(
        fused.linear_cross_entropy, tensors, target=target, gradient_precision="input", **options
    )
    expected, expected_grads, _ = loss_and_named_gradients(
        reference.linear_cross_entropy,
        upcast(tensors),
        upstream.double(),
        target=target,
        **upcast(options),
    )
    assert relative_error(actual, expected) <= tolerance(dtype)
    for name, gradient in actual_grads.items():
        assert relative_error(gradient, expected_grads[name]) <= tolerance(dtype), name


# --- The gradient filter -----------------------------------------------------------------------


def _filter_case() -> tuple[dict[str, torch.Tensor | None], torch.Tensor]:
    """fp32, 64-class blocks: classes 64-127 (the second block) have logits 30 below the rest
    (whose spread is about 3), p < 1e-8 each, and no row targets them."""
    tensors, target, _ = _case(option="bias")
    tensors["linear_bias"][64:128] -= 30.0
    target = torch.where((target >= 64) & (target < 128), target - 64, target)
    return tensors, target


def test_filter_skips_negligible_tiles_within_tolerance() -> None:
    tensors, target = _filter_case()
    _check(tensors, target, reduction="mean", filter_eps=1e-4)


def test_filter_drops_exactly_the_skipped_tiles() -> None:
    # At filter_eps = 0.5 the second class block is skipped (every p < 1e-8 < eps); so its
    # contribution, and only it, is missing from the gradients: the expectation is the float64
    # gradient of the logits with that block zeroed, pushed through the layer by hand.
    tensors, target = _filter_case()
    input, linear_weight, linear_bias = (tensors[name] for name in tensors)
    leaves = [t.detach().requires_grad_() for t in (input, linear_weight, linear_bias)]
    loss = fused.linear_cross_entropy(
        leaves[0], leaves[1], target, linear_bias=leaves[2], reduction="sum", filter_eps=0.5
    )
    loss.backward()
    logits = torch.nn.functional.linear(
        input.double(), linear_weight.double(), linear_bias.double()
    )
    grad_logits = torch.softmax(logits, dim=1)
    grad_logits[torch.arange(N_ROWS), target] -= 1.0
    # eps = 0.5: every block without a target in some row, and with p < 0.5 everywhere, goes.
    has_target = torch.zeros(N_CLASSES, dtype=torch.bool)
    has_target[target] = True
    for start in range(0, N_CLASSES, 64):
        block = slice(start, start + 64)
        if not has_target[block].any() and (torch.softmax(logits, 1)[:, block] < 0.5).all():
            grad_logits[:, block] = 0.0
    assert grad_logits[:, 64:128].abs().max() == 0  # the block meant to be skipped was
    assert_close(leaves[0].grad, grad_logits @ linear_weight.double(), torch.float32, "input")
    assert_close(leaves[1].grad, grad_logits.t() @ input.double(), torch.float32, "weight")
    assert_close(leaves[2].grad, grad_logits.sum(0), torch.float32, "bias")


def test_filter_auto_is_cce_value() -> None:
    assert fused._check_filter_eps("auto", torch.bfloat16, 0.0) == 2.0**-7 / 32
    assert fused._check_filter_eps(None, torch.bfloat16, 0.0) is None


# --- Module, probabilities, precision setting --------------------------------------------------


def test_module_matches_function() -> None:
    module = fused.LinearCrossEntropyLoss(
        N_FEATURES, N_CLASSES, bias=True, device=DEVICE, reduction="sum", softcap=5.0
    )
    reference_module = reference.LinearCrossEntropyLoss(
        N_FEATURES, N_CLASSES, bias=True, device=DEVICE, reduction="sum", softcap=5.0
    )
    reference_module.load_state_dict(module.state_dict())
    input = torch.randn(4, 6, N_FEATURES, device=DEVICE)
    target = torch.randint(0, N_CLASSES, (4, 6), device=DEVICE)
    module(input, target).backward()
    reference_module(input, target).backward()
    assert_close(module(input, target), reference_module(input, target), torch.float32, "loss")
    for name, parameter in module.named_parameters():
        expected = reference_module.get_parameter(name).grad
        assert_close(parameter.grad, expected, torch.float32, f"gradient of {name}")


def test_class_probability_target_runs_reference() -> None:
    # A target of class probabilities is N x V itself: the kernel hands it to the reference,
    # whose own accuracy tests/test_reference_linear.py checks. Same values, same gradients.
    tensors, _, _ = _case((3, 4, N_FEATURES), option="bias")
    probabilities = torch.softmax(torch.randn(3, 4, N_CLASSES, device=DEVICE), dim=-1)
    options = {"target": probabilities, "reduction": "mean", "label_smoothing": 0.1}
    actual, actual_grads, upstream = loss_and_named_gradients(
        fused.linear_cross_entropy, tensors, **options
    )
    expected, expected_grads, _ = loss_and_named_gradients(
        reference.linear_cross_entropy, tensors, upstream, **options
    )
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    for name, gradient in actual_grads.items():
        torch.testing.assert_close(gradient, expected_grads[name], rtol=0, atol=0)
    with pytest.raises(ValueError, match="class-index targets"):
        fused.linear_cross_entropy(
            tensors["input"], tensors["linear_weight"], probabilities, z_loss_scale=1e-3
        )


@pytest.mark.parametrize(
    ("matmul", "expected"),
    [
        ({"fp32_precision": "none", "allow_tf32": False}, "ieee"),
        ({"fp32_precision": "none", "allow_tf32": True}, "tf32"),
        ({"fp32_precision": "tf32", "allow_tf32": False}, "tf32"),
        ({"fp32_precision": "ieee", "allow_tf32": True}, "ieee"),
        ({"allow_tf32": True}, "tf32"),  # a torch without the new setting
    ],
)
def test_fp32_precision_follows_torch(monkeypatch: pytest.MonkeyPatch, matmul, expected) -> None:
    # A stand-in for torch.backends.cuda.matmul: setting the real one's new API and then its
    # legacy flag raises in torch 2.14, which would break every later test that touches it.
    monkeypatch.setattr(torch.backends.cuda, "matmul", types.SimpleNamespace(**matmul))
    assert fused._fp32_dot_precision() == expected


# --- Memory ------------------------------------------------------------------------------------


def test_peak_memory_holds_no_logits() -> None:
    # 256 rows x 2048 classes, D = 16: fp32 logits would take 2 MiB, and eager forward+backward
    # (6 MiB measured) keeps several such tensors. Ours allocates the gradients (136 KiB) and
    # O(N) statistics (about 25 KiB here), nothing of size N x V.
    from lossbench.bench.measure import cpu_allocation_peak

    if not INTERPRETED:
        pytest.skip("measures the CPU allocations of the interpreter")
    n_rows, n_features, n_classes = 256, 16, 2048
    input = torch.randn(n_rows, n_features, requires_grad=True)
    linear_weight = torch.randn(n_classes, n_features, requires_grad=True)
    target = torch.randint(0, n_classes, (n_rows,))

    def step() -> None:
        fused.linear_cross_entropy(input, linear_weight, target).backward()

    beyond_gradients = cpu_allocation_peak(step) - (n_rows + n_classes) * n_features * 4
    logits_bytes = n_rows * n_classes * 4
    assert 0 <= beyond_gradients < logits_bytes / 16, f"{beyond_gradients} bytes beyond gradients"


# --- Bad input ---------------------------------------------------------------------------------


def _call(**overrides):
    arguments = {
        "input": torch.randn(4, 8, device=DEVICE),
        "linear_weight": torch.randn(5, 8, device=DEVICE),
        "target": torch.randint(0, 5, (4,), device=DEVICE),
    }
    arguments.update(overrides)
    return lambda: fused.linear_cross_entropy(**arguments)


BAD_CALLS = {
    "feature mismatch": (ValueError, "last dimension", _call(linear_weight=torch.randn(5, 3))),
    "float64": (
        TypeError,
        "fp32, fp16 or bf16",
        _call(
            input=torch.randn(4, 8, dtype=torch.float64),
            linear_weight=torch.randn(5, 8, dtype=torch.float64),
        ),
    ),
    "dtype mix": (
        TypeError,
        "input's dtype",
        _call(linear_weight=torch.randn(5, 8, dtype=torch.bfloat16)),
    ),
    "target shape": (ValueError, r"shape \(4,\)", _call(target=torch.zeros(3, dtype=torch.long))),
    "label out of range": (
        ValueError,
        "outside",
        _call(target=torch.tensor([0, 1, 5, 2])),
    ),
    "bias shape": (ValueError, "linear_bias", _call(linear_bias=torch.randn(4))),
    "weight requiring grad": (
        NotImplementedError,
        "weight requires grad",
        _call(weight=torch.ones(5).requires_grad_()),
    ),
    "weight device": (ValueError, "weight is on meta", _call(weight=torch.ones(5, device="meta"))),
    "softcap": (ValueError, "softcap", _call(softcap=-1.0)),
    "reduction": (ValueError, "reduction", _call(reduction="avg")),
    "label_smoothing": (ValueError, "label_smoothing", _call(label_smoothing=2.0)),
    "z_loss_scale": (ValueError, "z_loss_scale", _call(z_loss_scale=float("inf"))),
    "filter_eps": (ValueError, "filter_eps", _call(filter_eps=1.5)),
    "filter_eps name": (ValueError, "filter_eps", _call(filter_eps="high")),
    "gradient_precision": (ValueError, "gradient_precision", _call(gradient_precision="bf16")),
    "filter with smoothing": (
        ValueError,
        "label_smoothing",
        _call(filter_eps=1e-4, label_smoothing=0.1),
    ),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_raises_before_launch(monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    def no_launch(*args):
        raise AssertionError("launched")

    monkeypatch.setattr(fused, "_launch_forward", no_launch)
    error, message, call = BAD_CALLS[case]
    with pytest.raises(error, match=message):
        call()


def test_input_off_the_kernel_device_raises() -> None:
    with pytest.raises(ValueError, match="input is on meta"):
        fused.linear_cross_entropy(
            torch.empty(3, 4, device="meta"),
            torch.empty(5, 4, device="meta"),
            torch.zeros(3, dtype=torch.long, device="meta"),
        )


# --- GPU-only sizes ----------------------------------------------------------------------------


@pytest.mark.gpu
def test_gemma_vocabulary_bf16() -> None:
    # Gemma 2's 256000 classes and D = 2304 (CCE's Table 1 shape) on 512 rows, with its soft-cap.
    tensors, target, _ = _case((512, 2304), n_classes=256000, option="bias", dtype=torch.bfloat16)
    _check(tensors, target, reduction="mean", softcap=30.0)


@pytest.mark.gpu
def test_more_than_2_31_elements_in_input_bf16() -> None:
    # N x D just above 2^31: int32 row offsets would wrap in the last rows.
    n_features = 4096
    n_rows = 2**31 // n_features + 130
    input = torch.randn(n_rows, n_features, device=DEVICE, dtype=torch.bfloat16)
    linear_weight = (torch.randn(64, n_features, device=DEVICE) / 64).to(torch.bfloat16)
    target = torch.randint(0, 64, (n_rows,), device=DEVICE)
    with torch.no_grad():
        losses = fused.linear_cross_entropy(input, linear_weight, target, reduction="none")
    tail = slice(n_rows - 3, n_rows)
    expected = reference.linear_cross_entropy(
        input[tail].double(), linear_weight.double(), target[tail], reduction="none"
    )
    assert relative_error(losses[tail], expected) <= 1e-2
