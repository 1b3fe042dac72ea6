"""reference/linear.py against torch: the linear cross-entropy, its options and its module.

The expectation is torch in float64 on the same values upcast: ``F.linear_cross_entropy`` where the
installed torch has it (2.14 does, 2.11 does not), else ``F.cross_entropy(F.linear(...))``, its
documented definition. Soft-capping and z-loss are not in torch: their expectation is composed
from torch pieces (``c * torch.tanh(logits / c)``, ``torch.logsumexp``). Loss and the gradients of
input, linear_weight and linear_bias are compared with reference.tolerance.assert_close.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional

from lossbench.reference.linear import LinearCrossEntropyLoss, linear_cross_entropy
from lossbench.reference.tolerance import assert_close

from .helpers import loss_and_named_gradients, upcast

# 7 classes and 5 features: neither a power of two; (N, D), (B, T, D) and the unbatched (D,).
N_CLASSES = 7
N_FEATURES = 5
INPUT_SHAPES = {"N,D": (6, N_FEATURES), "B,T,D": (2, 3, N_FEATURES), "D": (N_FEATURES,)}
REDUCTIONS = ("none", "mean", "sum")
IGNORE = -100

# Every option alone and all together; softcap and z-loss only where torch's expectation is
# composed by hand (torch_linear_cross_entropy below).
OPTIONS = {
    "plain": {},
    "bias": {"bias": True},
    "weight": {"weight": True},
    "ignore_index": {"ignored": True},
    "label_smoothing": {"label_smoothing": 0.3},
    "softcap": {"softcap": 2.0},
    "z_loss": {"z_loss_scale": 1e-2},
    "all": {
        "bias": True,
        "weight": True,
        "ignored": True,
        "label_smoothing": 0.3,
        "softcap": 2.0,
        "z_loss_scale": 1e-2,
    },
}


def torch_linear_cross_entropy(
    input,
    linear_weight,
    target,
    *,
    linear_bias=None,
    weight=None,
    ignore_index=IGNORE,
    reduction="mean",
    label_smoothing=0.0,
    z_loss_scale=0.0,
    softcap=None,
):
    """torch's linear cross-entropy, with soft-capping and z-loss composed from torch pieces.

    torch takes (N, D) or (D,) input: (..., D) input is flattened to (N, D) rows first.
    """
    plain = softcap is None and z_loss_scale == 0.0
    if plain and hasattr(functional, "linear_cross_entropy"):
        rows = input.reshape(-1, input.shape[-1]) if input.dim() > 2 else input
        n_classes = linear_weight.shape[0]
        is_probabilities = target.is_floating_point()
        flat_target = target.reshape(-1, n_classes) if is_probabilities else target.reshape(-1)
        loss = functional.linear_cross_entropy(
            rows,
            linear_weight,
            flat_target if input.dim() > 2 else target,
            linear_bias=linear_bias,
            weight=weight,
            reduction=reduction,
            # torch refuses an ignore_index with probabilities, even its default -100.
            ignore_index=None if is_probabilities else ignore_index,
            label_smoothing=label_smoothing,
        )
        return loss.reshape(input.shape[:-1]) if reduction == "none" else loss
    logits = functional.linear(input, linear_weight, linear_bias)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    n_classes = linear_weight.shape[0]
    flat_logits = logits.reshape(-1, n_classes)
    flat_target = (
        target.reshape(-1, n_classes) if target.is_floating_point() else target.reshape(-1)
    )
    loss = functional.cross_entropy(
        flat_logits,
        flat_target,
        weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )
    if z_loss_scale != 0.0:
        kept = flat_target != ignore_index
        z_loss = torch.where(kept, z_loss_scale * flat_logits.logsumexp(1) ** 2, 0.0)
        if reduction == "none":
            loss = loss + z_loss
        else:
            loss = loss + (z_loss.sum() / kept.sum() if reduction == "mean" else z_loss.sum())
    return loss.reshape(input.shape[:-1]) if reduction == "none" else loss


def make_case(input_shape, option: str, dtype: torch.dtype):
    """Inputs rounded to ``dtype``: hidden states, classifier, targets, and the loss options."""
    option = dict(OPTIONS[option])
    tensors = {
        "input": torch.randn(input_shape, dtype=torch.float64).to(dtype),
        # Weights of size ~1 so that logits spread over several units: easy and hard rows.
        "linear_weight": torch.randn(N_CLASSES, N_FEATURES, dtype=torch.float64).to(dtype),
        "linear_bias": None,
    }
    if option.pop("bias", False):
        tensors["linear_bias"] = torch.randn(N_CLASSES, dtype=torch.float64).to(dtype)
    target = torch.randint(0, N_CLASSES, input_shape[:-1])
    if option.pop("ignored", False):
        flat = target.view(-1)
        flat[torch.rand(flat.shape) < 0.3] = IGNORE
        flat[-1] = IGNORE  # at least one ignored (all of them for the unbatched input)
    if option.pop("weight", False):
        option["weight"] = (torch.rand(N_CLASSES, dtype=torch.float64) + 0.2).to(dtype)
    return tensors, target, option


def check_against_torch(input_shape, option: str, reduction: str, dtype: torch.dtype) -> None:
    tensors, target, options = make_case(input_shape, option, dtype)
    actual, actual_grads, upstream = loss_and_named_gradients(
        linear_cross_entropy, tensors, target=target, reduction=reduction, **options
    )
    expected, expected_grads, _ = loss_and_named_gradients(
        torch_linear_cross_entropy,
        upcast(tensors),
        upstream.double(),
        target=target,
        reduction=reduction,
        **upcast(options),
    )
    assert actual.dtype == dtype
    assert_close(actual, expected, dtype, f"{reduction} loss")
    assert actual_grads.keys() == expected_grads.keys()
    for name, gradient in actual_grads.items():
        assert gradient.dtype == dtype
        assert_close(gradient, expected_grads[name], dtype, f"{reduction}: gradient of {name}")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("input_shape", INPUT_SHAPES.values(), ids=INPUT_SHAPES.keys())
def test_linear_cross_entropy_float64(input_shape, option: str, reduction: str) -> None:
    check_against_torch(input_shape, option, reduction, torch.float64)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("option", ["plain", "all"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_linear_cross_entropy_low_precision(dtype: torch.dtype, option: str, reduction: str):
    check_against_torch(INPUT_SHAPES["B,T,D"], option, reduction, dtype)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_probability_targets_match_torch(reduction: str, label_smoothing: float) -> None:
    tensors, _, options = make_case(INPUT_SHAPES["B,T,D"], "weight", torch.float64)
    probabilities = torch.softmax(torch.randn(2, 3, N_CLASSES, dtype=torch.float64), dim=-1)
    options.update(target=probabilities, reduction=reduction, label_smoothing=label_smoothing)
    tensors["linear_bias"] = torch.randn(N_CLASSES, dtype=torch.float64)
    actual, actual_grads, upstream = loss_and_named_gradients(
        linear_cross_entropy, tensors, **options
    )
    expected, expected_grads, _ = loss_and_named_gradients(
        torch_linear_cross_entropy, tensors, upstream, **options
    )
    assert_close(actual, expected, torch.float64, "loss")
    assert actual_grads.keys() == {"input", "linear_weight", "linear_bias"}
    for name, gradient in actual_grads.items():
        assert_close(gradient, expected_grads[name], torch.float64, f"gradient of {name}")


def test_softcap_bounds_the_logits() -> None:
    # Huge weights: uncapped logits of order 1e3, capped ones within (-c, c), so the loss of a
    # row is at most 2c + log V.
    input = torch.randn(4, N_FEATURES, dtype=torch.float64)
    linear_weight = 1e3 * torch.randn(N_CLASSES, N_FEATURES, dtype=torch.float64)
    target = torch.randint(0, N_CLASSES, (4,))
    loss = linear_cross_entropy(input, linear_weight, target, reduction="none", softcap=1.5)
    assert (loss <= 2 * 1.5 + torch.log(torch.tensor(float(N_CLASSES)))).all()


def test_module_owns_the_classifier_and_matches_the_function() -> None:
    weight = torch.rand(N_CLASSES, dtype=torch.float64) + 0.2
    module = LinearCrossEntropyLoss(
        N_FEATURES,
        N_CLASSES,
        bias=True,
        dtype=torch.float64,
        weight=weight,
        reduction="sum",
        label_smoothing=0.1,
        z_loss_scale=1e-3,
        softcap=3.0,
    )
    assert dict(module.named_buffers()) == {"weight": weight}
    assert {name for name, _ in module.named_parameters()} == {"linear.weight", "linear.bias"}
    input = torch.randn(2, 3, N_FEATURES, dtype=torch.float64)
    target = torch.randint(0, N_CLASSES, (2, 3))
    expected = linear_cross_entropy(
        input,
        module.linear.weight,
        target,
        linear_bias=module.linear.bias,
        weight=weight,
        reduction="sum",
        label_smoothing=0.1,
        z_loss_scale=1e-3,
        softcap=3.0,
    )
    torch.testing.assert_close(module(input, target), expected, rtol=0, atol=0)
    module(input, target).backward()
    assert module.linear.weight.grad is not None and module.linear.bias.grad is not None


def _call(**overrides):
    arguments = {
        "input": torch.randn(4, N_FEATURES),
        "linear_weight": torch.randn(N_CLASSES, N_FEATURES),
        "target": torch.randint(0, N_CLASSES, (4,)),
    }
    arguments.update(overrides)
    return lambda: linear_cross_entropy(**arguments)


BAD_INPUT = {
    "feature mismatch": (
        _call(linear_weight=torch.randn(N_CLASSES, 3)),
        ValueError,
        "last dimension",
    ),
    "weight not 2-D": (_call(linear_weight=torch.randn(N_FEATURES)), ValueError, r"\(V, D\)"),
    "no classes": (_call(linear_weight=torch.randn(0, N_FEATURES)), ValueError, "one class"),
    "scalar input": (_call(input=torch.tensor(1.0)), ValueError, "feature dimension"),
    "bias shape": (_call(linear_bias=torch.randn(3)), ValueError, "linear_bias"),
    "weight shape": (_call(weight=torch.rand(3)), ValueError, "weight must have shape"),
    "dtype mix": (
        _call(linear_weight=torch.randn(N_CLASSES, N_FEATURES, dtype=torch.float64)),
        TypeError,
        "input's dtype",
    ),
    "integer input": (
        _call(input=torch.ones(4, N_FEATURES, dtype=torch.int64)),
        TypeError,
        "input",
    ),
    "target shape": (_call(target=torch.zeros(5, dtype=torch.int64)), ValueError, "shape"),
    "bool target": (_call(target=torch.zeros(4, dtype=torch.bool)), TypeError, "integer"),
    "label out of range": (
        _call(target=torch.tensor([0, 1, N_CLASSES, 2])),
        ValueError,
        "outside",
    ),
    "softcap zero": (_call(softcap=0.0), ValueError, "softcap"),
    "bad reduction": (_call(reduction="avg"), ValueError, "reduction"),
    "bad smoothing": (_call(label_smoothing=1.5), ValueError, "label_smoothing"),
    "negative z-loss": (_call(z_loss_scale=-1.0), ValueError, "z_loss_scale"),
}


@pytest.mark.parametrize(("call", "exception", "pattern"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_raises(call, exception, pattern: str) -> None:
    with pytest.raises(exception, match=pattern):
        call()
