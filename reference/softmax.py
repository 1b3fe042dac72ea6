"""Softmax losses written from their definitions: cross-entropy and the multi-class focal loss.

The float64 oracle for kernels/softmax.py. Every loss here is plain autograd over readable torch
ops: ``log p = x - logsumexp(x)`` over the class dimension, then a gather of the true class.

Shapes. ``input`` holds logits of shape (N, C), (N, C, d1, d2, ...) or, unbatched, (C,); the class
dimension is dim 1 (dim 0 when unbatched). A target of class indices has ``input``'s shape without
the class dimension, (N,), (N, d1, d2, ...) or (), with an integer dtype and values in [0, C) or
equal to ``ignore_index``. ``cross_entropy`` also takes a target of class probabilities with
``input``'s shape.

Formulas, per sample i (a position in N x d1 x d2 ...), with log p_ic = x_ic - logsumexp_c x_ic:

    cross_entropy, class indices:       l_i = -w_{y_i} log p_{i y_i}
    cross_entropy, class probabilities: l_i = -sum_c w_c q_ic log p_ic
    softmax_focal_loss:                 l_i = -alpha_{y_i} (1 - p_{i y_i})^gamma log p_{i y_i}

where w is the per-class ``weight`` (all ones when None) and alpha the per-class ``alpha``.

Reductions. 'none' returns l with the target's shape (index targets) or ``input``'s shape without
the class dimension (probability targets); ignored positions hold 0. 'sum' adds every l_i.
'mean' differs by loss, as torch defines it:

- cross_entropy, class indices: sum_i l_i / sum_i w_{y_i} over non-ignored i (the count of
  non-ignored targets when weight is None);
- cross_entropy, class probabilities: sum_i l_i / (N * d1 * d2 ...), whatever the weight;
- softmax_focal_loss: sum_i l_i / the count of non-ignored targets (alpha does not enter it).

A 'mean' over no non-ignored target is 0 / 0 = nan, as in torch.

Precision. fp16 and bf16 inputs are computed in float32 and the loss is rounded to the input's dtype
once, at the end (autograd rounds the gradient once too, when it casts it back), as torch's CPU
kernels do: rounding every intermediate to 8 bits would make the oracle the largest error in a
bf16 comparison. float32 and float64 are computed in their own dtype.

Non-finite logits, as torch. A row with a logit at +inf, or with no finite logit, has no softmax:
its loss is nan and so is its whole gradient (torch's log_softmax backward, grad - p sum(grad), is
nan where p is) -- even at an ignored position, whose loss is 0. A logit at -inf elsewhere is a
masked class: p = 0 there, a zero gradient, the other classes unaffected. At the target it makes
the loss +inf with a finite gradient (p - onehot, times the class weight; for the focal loss its
limit alpha_y (p - onehot)). Label smoothing, or a probability target that puts mass on a class at
-inf, makes the loss +inf with a finite gradient; a class at -inf whose target probability is 0
makes a probability target's loss nan (0 x log 0, as torch computes it).

Targets. Class indices may have any integer dtype (torch takes int64 and uint8), on the logits'
device. Probability targets take no ``ignore_index`` (torch raises for one >= 0, and ignores a
negative one, the default -100 included).

Label smoothing (cross_entropy only), eps = ``label_smoothing``, C classes, as torch does it:

- class probabilities: q = (1 - eps) * target + eps / C, then the formula above;
- class indices: (1 - eps) * nll + (eps / C) * smooth, where nll is the unsmoothed loss above with
  its reduction, smooth_i = -sum_c w_c log p_ic (0 at ignored positions), and smooth is reduced
  like nll: 'mean' divides sum_i smooth_i by the same sum of w_{y_i} (or count).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lossbench.reference._checks import (
    check_alpha_values,
    check_class_index_target,
    check_floating,
    check_focal_options,
    check_no_ignore_index_for_probabilities,
    check_per_class,
    check_reduction,
    check_same_device,
    class_dim_of,
    compute_dtype,
    reduce,
)


def _log_softmax(input: torch.Tensor, class_dim: int) -> torch.Tensor:
    """log p = x - logsumexp(x) over the class dimension, exact for p close to 1.

    With m the largest logit (at class a) and rest = sum over c != a of exp(x_c - m):

        log p_c = (x_c - m) - log1p(rest)

    ``torch.logsumexp`` forms log(1 + rest), which is 0 once rest < 1.1e-16 (float64); log1p keeps
    log p_a = -log1p(rest) exact when p_a is close to 1 (the regime focal loss is about). The
    entry x_a - m is identically 0, so it is written in as a constant: autograd then builds the
    gradient 1 - p_a from the other classes' terms (as rest / (1 + rest)) instead of as the
    cancelling 1 - 1 + rest / (1 + rest), and keeps it exact as well.
    """
    top_class = input.argmax(dim=class_dim, keepdim=True)
    row_max = input.gather(class_dim, top_class)
    shifted = (input - row_max).scatter(class_dim, top_class, 0.0)
    rest = shifted.exp().scatter(class_dim, top_class, 0.0).sum(dim=class_dim, keepdim=True)
    return shifted - torch.log1p(rest) + _nan_rows(input, ~torch.isfinite(row_max))


def _nan_rows(input: torch.Tensor, invalid: torch.Tensor) -> torch.Tensor:
    """0 on the rows that have a softmax; nan, in value and in every gradient entry, on the
    ``invalid`` ones (a logit at +inf or nan, or none finite), as torch's log_softmax gives.

    Added to log p: x * nan has the gradient nan, and the valid rows see 0 x 0 through
    ``torch.where``, which passes no gradient to the branch it did not select.
    """
    return torch.where(invalid, input, 0.0) * torch.where(invalid, math.nan, 0.0)


def _true_class_log_prob(
    log_probs: torch.Tensor, target: torch.Tensor, kept: torch.Tensor, class_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p of each target's class, and the target with ignored positions pointing at class 0.

    Ignored positions read class 0 (a valid index); callers zero them with ``torch.where``.
    """
    safe_target = target.masked_fill(~kept, 0).long()  # gather indexes with int64 only
    gathered = log_probs.gather(class_dim, safe_target.unsqueeze(class_dim))
    return gathered.squeeze(class_dim), safe_target


def _along_class_dim(per_class: torch.Tensor, n_dims: int, class_dim: int) -> torch.Tensor:
    """View a (C,) tensor with ``n_dims`` dims, C at ``class_dim``, to broadcast against logits."""
    shape = [1] * n_dims
    shape[class_dim] = per_class.numel()
    return per_class.view(shape)


def _reduce_over_kept(
    loss: torch.Tensor, reduction: str, denominator: torch.Tensor
) -> torch.Tensor:
    """'mean' as sum / ``denominator`` (weights or count of kept targets); else ``reduce``."""
    if reduction == "mean":
        return loss.sum() / denominator
    return reduce(loss, reduction)


def _cross_entropy_class_indices(
    input: torch.Tensor,
    class_dim: int,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
) -> torch.Tensor:
    log_probs = _log_softmax(input, class_dim)
    kept = target != ignore_index
    target_log_prob, safe_target = _true_class_log_prob(log_probs, target, kept, class_dim)
    if weight is None:
        target_weight = kept.to(input.dtype)
    else:
        target_weight = torch.where(kept, weight[safe_target], 0.0)
    # torch.where, not a product with the 0 weight: log p of an ignored position may be -inf.
    nll = torch.where(kept, -target_weight * target_log_prob, 0.0)
    weight_sum = target_weight.sum()
    nll = _reduce_over_kept(nll, reduction, weight_sum)
    if label_smoothing == 0.0:
        return nll

    n_classes = input.shape[class_dim]
    if weight is None:
        smooth = -log_probs.sum(class_dim)
    else:
        smooth = -(log_probs * _along_class_dim(weight, input.dim(), class_dim)).sum(class_dim)
    smooth = torch.where(kept, smooth, 0.0)
    smooth = _reduce_over_kept(smooth, reduction, weight_sum)
    return (1 - label_smoothing) * nll + (label_smoothing / n_classes) * smooth


def _cross_entropy_class_probabilities(
    input: torch.Tensor,
    class_dim: int,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    reduction: str,
    label_smoothing: float,
) -> torch.Tensor:
    n_classes = input.shape[class_dim]
    if label_smoothing > 0.0:
        target = target * (1 - label_smoothing) + label_smoothing / n_classes
    weighted_log_probs = _log_softmax(input, class_dim) * target
    if weight is not None:
        weighted_log_probs = weighted_log_probs * _along_class_dim(weight, input.dim(), class_dim)
    # 'mean' divides by the number of samples N * d1 * ..., which is what reduce's mean does.
    return reduce(-weighted_log_probs.sum(class_dim), reduction)


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss_scale: float = 0.0,
    process_group: torch.distributed.ProcessGroup | None = None,
    class_offset: int | None = None,
) -> torch.Tensor:
    """Cross-entropy of logits ``input`` against ``target``; mirrors ``F.cross_entropy``.

    Args:
        input: logits, floating, shape (N, C), (N, C, d1, ...) or (C,).
        target: class indices (integer, ``input``'s shape without dim 1, or () for (C,) input) or
            class probabilities (floating, ``input``'s shape). A target with ``input``'s shape is
            read as probabilities, as torch does.
        weight: per-class weight, shape (C,), ``input``'s dtype; None weighs every class 1.
        ignore_index: class-index targets equal to it contribute 0 to the loss and to the 'mean'
            denominator; with probability targets it must be negative (unused), as in torch.
        reduction: 'none', 'mean' or 'sum'; see the module docstring for what 'mean' divides by.
        label_smoothing: eps in [0, 1]; mixes the target with the uniform distribution.
        z_loss_scale: z >= 0, not in torch: adds PaLM's z-loss z * logsumexp(x)^2 per
            non-ignored sample (class-index targets only), unweighted, and under 'mean' divided
            by the count of non-ignored targets, as Liger-Kernel does; the oracle of
            ``kernels.cross_entropy``'s option of that name. 0 leaves torch's loss.
        process_group: None, or the group over whose ranks the classes are split: ``input`` is
            then this rank's slice, ``target`` and ``weight`` are global, and every rank returns
            the loss of all the classes (reference.vocab_parallel, two all-reduces of O(N)).
        class_offset: with ``process_group``, this rank's first class; None works it out
            (reference.vocab_parallel.class_slices: one all-gather and a host sync per call).

    Keyword-only after ``weight``: torch's fourth positional argument is the deprecated
    ``size_average``, so positional calls could not mean the same thing here and there.

    Returns:
        the loss in ``input``'s dtype (probability targets follow torch's type promotion): a
        scalar for 'mean' and 'sum', per-sample losses for 'none'.

    Raises:
        ValueError: bad reduction, label_smoothing outside [0, 1], z_loss_scale negative or not
            finite or given with probability targets, ignore_index >= 0 with probability targets,
            mismatched shapes, a class index outside [0, C) that is not ``ignore_index``, weight
            not of shape (C,), tensors on different devices.
        TypeError: non-floating input, weight or probability target; non-integer index target;
            weight of another dtype than input.
    """
    if process_group is not None:
        from lossbench.reference import vocab_parallel

        return vocab_parallel.cross_entropy(
            input,
            target,
            weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            z_loss_scale=z_loss_scale,
            process_group=process_group,
            class_offset=class_offset,
        )
    check_floating("input", input)
    check_same_device(input=input, target=target, weight=weight)
    class_dim = class_dim_of(input)
    check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if not 0.0 <= z_loss_scale < math.inf:
        raise ValueError(f"z_loss_scale must be finite and >= 0, got {z_loss_scale}")
    if weight is not None:
        check_per_class("weight", weight, input)
    if target.shape == input.shape:
        check_floating("target of class probabilities", target)
        if z_loss_scale != 0.0:
            raise ValueError("z_loss_scale applies to class-index targets, not probabilities")
        check_no_ignore_index_for_probabilities(ignore_index)
        result_dtype = torch.promote_types(input.dtype, target.dtype)
        dtype = compute_dtype(result_dtype)
        loss = _cross_entropy_class_probabilities(
            input.to(dtype),
            class_dim,
            target.to(dtype),
            None if weight is None else weight.to(dtype),
            reduction,
            label_smoothing,
        )
        return loss.to(result_dtype)
    check_class_index_target(input, target, ignore_index)
    dtype = compute_dtype(input.dtype)
    loss = _cross_entropy_class_indices(
        input.to(dtype),
        class_dim,
        target,
        None if weight is None else weight.to(dtype),
        ignore_index,
        reduction,
        label_smoothing,
    )
    if z_loss_scale != 0.0:
        kept = target != ignore_index
        log_sum_exp = input.to(dtype).logsumexp(class_dim)
        z_loss = torch.where(kept, z_loss_scale * log_sum_exp**2, 0.0)
        loss = loss + _reduce_over_kept(z_loss, reduction, kept.sum())
    return loss.to(input.dtype)


def _focal_modulating_factor(one_minus_p: torch.Tensor, gamma: float) -> torch.Tensor:
    """(1 - p)^gamma, with a zero gradient where 1 - p == 0.

    At 1 - p == 0 (p rounds to exactly 1) and 0 < gamma < 1, the derivative of base^gamma is
    infinite and autograd would multiply it by log p == 0, giving nan. The exact gradient of the
    whole loss there is 0 (the loss behaves as (1 - p)^(1 + gamma)), so those positions take the
    constant 0^gamma (0, or 1 when gamma == 0) and the pow sees a harmless base of 1.
    """
    positive = one_minus_p > 0
    safe_base = torch.where(positive, one_minus_p, 1.0)
    return torch.where(positive, safe_base.pow(gamma), 0.0**gamma)


def softmax_focal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    alpha: float | torch.Tensor | None = None,
    gamma: float = 2.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    *,
    process_group: torch.distributed.ProcessGroup | None = None,
    class_offset: int | None = None,
) -> torch.Tensor:
    """Multi-class focal loss ``-alpha_y (1 - p_y)^gamma log p_y`` with p = softmax(input).

    Args:
        input: logits, floating, shape (N, C), (N, C, d1, ...) or (C,).
        target: class indices, integer, ``input``'s shape without dim 1 (or () for (C,) input).
        alpha: None (no weighting), a float in [0, 1] applied to every class, or a per-class
            tensor of shape (C,) with ``input``'s dtype and entries in [0, 1].
        gamma: focusing parameter, finite and >= 0; gamma = 0 with alpha = None is cross-entropy.
        ignore_index: targets equal to it contribute 0 and are not counted by 'mean'.
        reduction: 'none' (per-sample, target's shape), 'sum', or 'mean' = sum / the number of
            non-ignored targets (alpha does not enter the denominator; nan if every target is
            ignored).
        process_group, class_offset: classes split over the group's ranks, as
            :func:`cross_entropy`'s; a tensor ``alpha`` is then the full (C,) vector.

    1 - p_y is computed as -expm1(log p_y), so it keeps its precision when p_y is close to 1.
    Where p_y rounds to exactly 1 the loss is 0 with a zero gradient, for every gamma >= 0.
    Where p_y is exactly 0 (the true class's logit is -inf) the loss is inf and the gradient its
    limit alpha_y (p - onehot): (1 - p)^gamma is exactly 1 there, so its derivative (0, times an
    infinite log p) is left out rather than made nan.

    Raises:
        ValueError: bad reduction, gamma or alpha outside the rule of
            ``reference._checks.check_focal_options`` (gamma finite and >= 0, alpha in [0, 1]),
            alpha tensor not of shape (C,), mismatched shapes, a class index outside [0, C) that
            is not ``ignore_index``, tensors on different devices.
        TypeError: non-floating input or alpha tensor, alpha tensor of another dtype than input,
            non-integer target.
    """
    if process_group is not None:
        from lossbench.reference import vocab_parallel

        return vocab_parallel.softmax_focal_loss(
            input,
            target,
            alpha,
            gamma,
            ignore_index,
            reduction,
            process_group=process_group,
            class_offset=class_offset,
        )
    check_floating("input", input)
    alpha_tensor = alpha if isinstance(alpha, torch.Tensor) else None
    check_same_device(input=input, target=target, alpha=alpha_tensor)
    check_reduction(reduction)
    check_focal_options(alpha, gamma, negative_alpha_means_none=False)
    if alpha_tensor is not None:
        check_per_class("alpha", alpha_tensor, input)
        check_alpha_values(alpha_tensor)
    class_dim = check_class_index_target(input, target, ignore_index)
    dtype = compute_dtype(input.dtype)
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.to(dtype)
    kept = target != ignore_index
    target_log_prob, safe_target = _true_class_log_prob(
        _log_softmax(input.to(dtype), class_dim), target, kept, class_dim
    )
    one_minus_p = -torch.expm1(target_log_prob)
    modulating = _focal_modulating_factor(one_minus_p, gamma)
    # p_y = 0 (a true logit at -inf): the factor is exactly 1 with its derivative left out.
    modulating = torch.where(target_log_prob == -math.inf, 1.0, modulating)
    loss = -modulating * target_log_prob
    if isinstance(alpha, torch.Tensor):
        loss = alpha[safe_target] * loss
    elif alpha is not None:
        loss = alpha * loss
    loss = torch.where(kept, loss, 0.0)
    return _reduce_over_kept(loss, reduction, kept.sum()).to(input.dtype)


class CrossEntropyLoss(nn.Module):
    """Module form of :func:`cross_entropy`; ``weight`` is a buffer, as in torch's module.

    torch's deprecated ``size_average`` and ``reduce`` arguments are left out, so every argument
    after ``weight`` is keyword-only. ``process_group`` and ``class_offset`` split the classes
    over a group's ranks, as in :func:`cross_entropy` (``input`` is then this rank's slice).
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        process_group: torch.distributed.ProcessGroup | None = None,
        class_offset: int | None = None,
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.process_group = process_group
        self.class_offset = class_offset

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(
            input,
            target,
            self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            process_group=self.process_group,
            class_offset=self.class_offset,
        )


class SoftmaxFocalLoss(nn.Module):
    """Module form of :func:`softmax_focal_loss`; a tensor ``alpha`` is a buffer, a float is not.
    ``process_group`` and ``class_offset`` split the classes over a group's ranks, as in the
    function."""

    def __init__(
        self,
        alpha: float | torch.Tensor | None = None,
        gamma: float = 2.0,
        ignore_index: int = -100,
        reduction: str = "mean",
        *,
        process_group: torch.distributed.ProcessGroup | None = None,
        class_offset: int | None = None,
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        check_focal_options(alpha, gamma, negative_alpha_means_none=False)
        if isinstance(alpha, torch.Tensor):
            check_alpha_values(alpha)
            self.register_buffer("alpha", alpha)
        else:
            self.alpha = alpha
        self.gamma = gamma
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.process_group = process_group
        self.class_offset = class_offset

    # kernels.SoftmaxFocalLoss swaps in the fused function; the arguments stay these.
    function = staticmethod(softmax_focal_loss)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.function(
            input,
            target,
            self.alpha,
            self.gamma,
            self.ignore_index,
            self.reduction,
            process_group=self.process_group,
            class_offset=self.class_offset,
        )
