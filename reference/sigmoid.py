"""Sigmoid-family classification losses, written from their definitions: the float64 oracle.

Every element of the input is its own binary problem (binary and multi-label classification),
so the losses are elementwise and work on tensors of any shape. ``input`` and ``target`` must
have the same shape; the elementwise loss has that shape too.

binary_cross_entropy (mirrors ``torch.nn.functional.binary_cross_entropy``), on probabilities::

    loss = -w * [y * max(log p, -100) + (1 - y) * max(log(1 - p), -100)]

  ``p`` (the input) and ``y`` (the target) must lie in [0, 1]. The floor at -100 is torch's: it
  keeps the loss finite (at most 100 per element) when p is exactly 0 or 1.

binary_cross_entropy_with_logits (mirrors ``torch.nn.functional.binary_cross_entropy_with_logits``),
on raw logits ``x``, with ``sigma`` the logistic sigmoid::

    loss = -w * [pw * y * log sigma(x) + (1 - y) * log(1 - sigma(x))]
         =  w * [pw * y * softplus(-x) + (1 - y) * softplus(x)]
    softplus(z) = max(z, 0) + log1p(exp(-|z|))

  The softplus form never exponentiates a positive number, so the loss and its gradient are
  finite and accurate for |x| up to 1e4 in every floating dtype. ``y`` may be a soft target.

sigmoid_focal_loss (mirrors ``torchvision.ops.sigmoid_focal_loss``, RetinaNet's loss)::

    ce      = binary_cross_entropy_with_logits(x, y, reduction="none")
    1 - p_t = y * sigma(-x) + (1 - y) * sigma(x)   (p_t = p y + (1 - p)(1 - y), p = sigma(x))
    loss    = ce * (1 - p_t) ** gamma
    loss    = loss * (alpha * y + (1 - alpha) * (1 - y))   only when alpha >= 0

  ``1 - p_t`` is written so that nothing is subtracted from 1: equal to torchvision's
  ``1 - p_t`` algebraically (soft targets included), without its cancellation when p_t is near 1.
  A negative alpha means no class weighting (torchvision's ``alpha=-1``); gamma must be >= 0.

Broadcasting: ``weight`` (w) must broadcast to the input's shape, and so must ``pos_weight`` (pw),
typically of shape (C,) for a (N, C) or (N, ..., C) input: one weight per label on the last
dimension. Neither may enlarge the result, exactly as torch requires.

Reduction: "none" returns the elementwise loss (the input's shape), "sum" its sum, "mean" its sum
divided by the number of elements (not by the sum of the weights). A scalar otherwise.

Dtypes: any floating dtype; the result has the promoted dtype of input and target. float64 and
float32 are computed in their own dtype (float64 inputs give the oracle); float16 and bfloat16 are
computed in float32 and rounded once at the end, loss and gradients alike (autograd runs through the
casts), as fused kernels do. Running every op in bf16 instead compounds the roundings: measured up
to 2e-2 relative on the focal gradient, twice the bf16 tolerance.

Gradients come from autograd and agree with torch's, except for binary_cross_entropy where a log is
floored (p < e^-100 ~ 3.7e-44 or 1 - p < e^-100, including p exactly 0 or 1): there the floored
term contributes no gradient, while torch's backward is w (p - y) / max(p (1 - p), 1e-12)
everywhere. Both agree wherever p (1 - p) >= 1e-12. torch has no gradient w.r.t. weight or
pos_weight; autograd gives the reference one, which nothing here tests against torch.

Arguments after ``weight`` are keyword-only in the binary cross-entropies: torch's fourth
positional argument is the deprecated ``size_average``, so a positional call written for torch
fails here instead of binding to another parameter.

Non-finite logits give what torch (torchvision for the focal loss) gives, loss and gradients:
at x = +inf the loss is +inf where y < 1 and nan where y = 1 (torch's 0 x inf); at x = -inf it is
nan for every target (torch's -inf + inf). The input gradient stays finite (sigmoid(x) - y,
weighted) and the target gradient is -x, +-inf. The focal loss's input and target gradients at an
infinite logit are nan for gamma > 0 (torchvision's autograd multiplies sigmoid's zero
derivative there by the infinite cross-entropy).

Bad input raises before anything is computed: a non-floating tensor (TypeError), mismatched
shapes, tensors on different devices, a weight or pos_weight that does not broadcast to the
input, a reduction outside {none, mean, sum}, probabilities or targets outside [0, 1] for
binary_cross_entropy, a focal gamma or alpha outside ``_checks.check_focal_options``'s rule
(ValueError).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lossbench.reference._checks import (
    check_broadcasts_to,
    check_floating,
    check_focal_options,
    check_reduction,
    check_same_device,
    compute_dtype,
    reduce,
)

# torch floors each log of binary_cross_entropy at -100 (so p = 0 costs 100, not inf).
LOG_FLOOR = -100.0


def _check_same_shape(input: Tensor, target: Tensor) -> None:
    if input.shape != target.shape:
        raise ValueError(
            f"target shape {tuple(target.shape)} must equal input shape {tuple(input.shape)}"
        )


def _check_broadcasts_to_input(name: str, tensor: Tensor, input: Tensor) -> None:
    """``tensor`` must be floating and broadcast to ``input``'s shape, as torch requires."""
    check_floating(name, tensor)
    check_broadcasts_to(name, tensor, input.shape)


def _check_probabilities(name: str, tensor: Tensor) -> None:
    """Every element in [0, 1] (nan fails), as torch's binary_cross_entropy checks."""
    if not ((tensor >= 0) & (tensor <= 1)).all():
        raise ValueError(f"every element of {name} must lie in [0, 1] (a probability)")


def _floored_log(probability: Tensor) -> Tensor:
    """``max(log p, -100)``; where p == 0 the value is -100 with gradient 0 (not 0 * inf = nan)."""
    is_zero = probability == 0
    log_probability = torch.log(probability.masked_fill(is_zero, 1.0))
    return log_probability.masked_fill(is_zero, LOG_FLOOR).clamp_min(LOG_FLOOR)


def _floored_log_complement(probability: Tensor) -> Tensor:
    """``max(log(1 - p), -100)`` via log1p (accurate for small p); -100, gradient 0 at p == 1."""
    is_one = probability == 1
    log_complement = torch.log1p(-probability.masked_fill(is_one, 0.0))
    return log_complement.masked_fill(is_one, LOG_FLOOR).clamp_min(LOG_FLOOR)


def _softplus(z: Tensor) -> Tensor:
    """``log(1 + exp(z))`` as ``max(z, 0) + log1p(exp(-|z|))``: exp never overflows.

    ``torch.maximum`` splits its gradient evenly at a tie, so the gradient at z = 0 is the exact
    sigmoid(0) = 1/2 (``clamp_min`` would give 1, ``relu`` 0).
    """
    return torch.maximum(z, torch.zeros_like(z)) + torch.log1p(torch.exp(-z.abs()))


def binary_cross_entropy(
    input: Tensor, target: Tensor, weight: Tensor | None = None, *, reduction: str = "mean"
) -> Tensor:
    """Binary cross-entropy of probabilities ``input`` against ``target`` (see the module doc).

    Args:
        input: probabilities in [0, 1], any shape, floating dtype.
        target: same shape as ``input``, values in [0, 1] (soft targets allowed).
        weight: optional rescaling weight that broadcasts to ``input``'s shape.
        reduction: "none" (loss of ``input``'s shape), "mean" (sum / numel) or "sum".
    """
    check_reduction(reduction)
    check_floating("input", input)
    check_floating("target", target)
    check_same_device(input=input, target=target, weight=weight)
    _check_same_shape(input, target)
    if weight is not None:
        _check_broadcasts_to_input("weight", weight, input)
    _check_probabilities("input", input)
    _check_probabilities("target", target)

    result_dtype = torch.promote_types(input.dtype, target.dtype)
    probability = input.to(compute_dtype(result_dtype))
    target = target.to(probability.dtype)
    loss = -(
        target * _floored_log(probability) + (1 - target) * _floored_log_complement(probability)
    )
    if weight is not None:
        loss = loss * weight.to(loss.dtype)
    return reduce(loss, reduction).to(result_dtype)


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
) -> Tensor:
    """Binary cross-entropy of logits ``input`` against ``target`` (see the module doc).

    Args:
        input: logits, any shape, floating dtype.
        target: same shape as ``input``, usually in [0, 1] (soft targets allowed).
        weight: optional rescaling weight that broadcasts to ``input``'s shape.
        reduction: "none" (loss of ``input``'s shape), "mean" (sum / numel) or "sum".
        pos_weight: optional weight of the positive term that broadcasts to ``input``'s shape,
            typically (C,) with C the size of the last dimension.
    """
    check_reduction(reduction)
    check_floating("input", input)
    check_floating("target", target)
    check_same_device(input=input, target=target, weight=weight, pos_weight=pos_weight)
    _check_same_shape(input, target)
    if weight is not None:
        _check_broadcasts_to_input("weight", weight, input)
    if pos_weight is not None:
        _check_broadcasts_to_input("pos_weight", pos_weight, input)

    result_dtype = torch.promote_types(input.dtype, target.dtype)
    logits = input.to(compute_dtype(result_dtype))
    target = target.to(logits.dtype)
    # -log sigmoid(x) = softplus(-x) and -log(1 - sigmoid(x)) = softplus(x).
    positive_term = target * _softplus(-logits)
    if pos_weight is not None:
        positive_term = pos_weight.to(logits.dtype) * positive_term
    loss = positive_term + (1 - target) * _softplus(logits) + _nan_at_minus_infinity(logits)
    if weight is not None:
        loss = loss * weight.to(logits.dtype)
    return reduce(loss, reduction).to(result_dtype)


def _nan_at_minus_infinity(logits: Tensor) -> Tensor:
    """A constant (no gradient) that is nan where a logit is -inf and 0 elsewhere.

    torch evaluates the loss as (1 - y) x - pw' log sigmoid(x), which at x = -inf is
    -inf + inf = nan whatever the target (0 x -inf for y = 1); the softplus form here would give
    the limit (0, or +inf) instead. Added to the loss, this keeps torch's value and leaves the
    gradients (finite, as torch's) alone.
    """
    return torch.where(logits == -torch.inf, torch.nan, 0.0)


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> Tensor:
    """RetinaNet's sigmoid focal loss of logits ``inputs`` (see the module doc).

    Args:
        inputs: logits, any shape, floating dtype.
        targets: same shape as ``inputs``, 1 for positives and 0 for negatives (soft allowed).
        alpha: weight of positives in [0, 1] (negatives get 1 - alpha); negative: no weighting.
            (torchvision 0.29 accepts only -1 among negatives; every negative is accepted here.)
        gamma: focusing exponent >= 0 on (1 - p_t); 0 gives (alpha-weighted) BCE with logits.
        reduction: "none" (loss of ``inputs``' shape, the default as in torchvision),
            "mean" (sum / numel) or "sum".
    """
    check_reduction(reduction)
    check_floating("inputs", inputs)
    check_floating("targets", targets)
    check_same_device(inputs=inputs, targets=targets)
    _check_same_shape(inputs, targets)
    check_focal_options(alpha, gamma, negative_alpha_means_none=True)

    result_dtype = torch.promote_types(inputs.dtype, targets.dtype)
    logits = inputs.to(compute_dtype(result_dtype))
    targets = targets.to(logits.dtype)
    cross_entropy = binary_cross_entropy_with_logits(logits, targets, reduction="none")
    # 1 - p_t = 1 - [p y + (1 - p)(1 - y)] = y (1 - p) + (1 - y) p, and 1 - p = sigmoid(-x).
    one_minus_p_t = targets * torch.sigmoid(-logits) + (1 - targets) * torch.sigmoid(logits)
    loss = cross_entropy * one_minus_p_t**gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return reduce(loss, reduction).to(result_dtype)


class BCELoss(nn.Module):
    """Module form of :func:`binary_cross_entropy`, like ``torch.nn.BCELoss``.

    ``weight`` is registered as a buffer (it follows ``.to()``, ``state_dict``), as in torch.
    torch's deprecated ``size_average`` and ``reduce`` arguments are not offered, so ``reduction``
    is keyword-only: a positional call written for torch fails instead of binding wrongly.
    """

    def __init__(self, weight: Tensor | None = None, *, reduction: str = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        self.reduction = reduction
        self.weight: Tensor | None
        self.register_buffer("weight", weight)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy(input, target, self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(nn.Module):
    """Module form of :func:`binary_cross_entropy_with_logits`, like ``torch.nn.BCEWithLogitsLoss``.

    ``weight`` and ``pos_weight`` are registered as buffers, as in torch. torch's deprecated
    ``size_average`` and ``reduce`` arguments are not offered, so ``reduction`` and ``pos_weight``
    are keyword-only: a positional call written for torch fails instead of binding wrongly.
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        *,
        reduction: str = "mean",
        pos_weight: Tensor | None = None,
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        self.reduction = reduction
        self.weight: Tensor | None
        self.pos_weight: Tensor | None
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    # kernels.BCEWithLogitsLoss swaps in the fused function; the arguments stay these.
    function = staticmethod(binary_cross_entropy_with_logits)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return self.function(
            input, target, self.weight, reduction=self.reduction, pos_weight=self.pos_weight
        )


class SigmoidFocalLoss(nn.Module):
    """Module form of :func:`sigmoid_focal_loss` (torchvision has only the function).

    The default reduction is "none", the function's default.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none") -> None:
        super().__init__()
        check_reduction(reduction)
        check_focal_options(alpha, gamma, negative_alpha_means_none=True)
        self.alpha = alpha
        self.gamma = gamma
        self.reduction = reduction

    # kernels.SigmoidFocalLoss swaps in the fused function; the arguments stay these.
    function = staticmethod(sigmoid_focal_loss)

    def forward(self, inputs: Tensor, targets: Tensor) -> Tensor:
        return self.function(inputs, targets, self.alpha, self.gamma, self.reduction)
