"""Vocabulary-parallel softmax losses: the classes split over the ranks of a process group.

The float64 oracle of kernels/vocab_parallel.py, in readable torch ops and torch.distributed
collectives. ``reference.softmax.cross_entropy`` and ``softmax_focal_loss`` call it when given a
``process_group``.

Layout. With a group of p ranks, rank r holds the logits of the classes [offset_r, offset_r + V_r)
of C = sum_r V_r: ``input`` of shape (N, V_r), (N, V_r, d1, ...) or (V_r,), the class dimension at
dim 1 (dim 0 unbatched), every V_r >= 1 and uneven sizes allowed. The slices tile [0, C): each
class is held by exactly one rank. ``class_offset`` is this rank's offset_r; None works it out with
``class_slices`` (rank r's slice follows those of ranks 0 .. r-1 of the group), at the cost of one
all-gather of p integers and a host sync per call: call ``class_slices`` once and pass its
``offset`` to avoid both. ``target`` holds global class indices in [0, C) (or ``ignore_index``) and
is the same on every rank; ``weight`` (cross-entropy) and a tensor ``alpha`` (focal loss) are the
full (C,) vectors, the same on every rank. Keeping them whole costs O(C), which is small, and lets
every rank weigh a row by its true class wherever that class lives.

Result. Every rank returns the loss of the logits concatenated along the class dimension, for every
option (weight, ignore_index, label smoothing over all C classes, z-loss, focal alpha and gamma,
every reduction): the same value on every rank. With the same upstream gradient on every rank (a
loss that every rank uses alike), each rank's input gradient is its slice of the full gradient.

Communication, per call, two all-reduces, each over O(N) values (N: the number of rows, samples
times positions), none of them O(N * C):

1. MAX of each row's largest logit on this rank: N values;
2. SUM of this rank's per-row partial sums, relative to the global max m: the exp-sum as
   "rest" (below), the number of ranks that hold a logit equal to m, the true-class logit (from
   the rank that holds it, 0 elsewhere), and with label smoothing sum_c w_c (m - x_c); plus one
   value, V_r, so that every rank learns C: 3 N + 1 values, 4 N + 1 with label smoothing.

Backward communicates nothing: every rank already holds the global row statistics, and the
all-reduce SUM's backward is the identity (``_SumOverRanks``), which is exact when every rank
differentiates the same loss with the same upstream gradient.

Precision, as reference.softmax: log p = (x - m) - log1p(rest), rest = sum_c exp(x_c - m) less 1 for
one class at the global max. Each rank adds its share of rest without ever forming 1 + rest - 1:
a rank whose largest logit is m leaves its top class out of its share, and the count of such ranks,
less 1, is added back as an integer. So log p_y keeps its relative precision as p_y nears 1 (focal
loss's regime). One difference to the single-device oracle: there the max is the top logit itself,
differentiable, which keeps the true-class gradient 1 - p_y relative-exact; here the max is a
constant of the all-reduce, and autograd forms 1 - p_y as 1 - 1 / (1 + rest), exact to float64's
absolute error (1e-16) only. The fused kernels compute it as -expm1(log p_y), relative-exact.

Checked on every rank before the collectives: shapes and dtypes of this rank's arguments, the
options, ``class_offset`` >= 0. Checked after them, where C is known (on the host: this oracle
reads it): ``offset + V_r <= C``, weight and alpha of shape (C,), labels in [0, C). Not checked:
that explicit offsets tile [0, C) without overlap (they are not compared across ranks), and that
every rank passes the same N, target, options and weight: unequal sizes make the collectives
fail or hang, depending on the backend; unequal values give each rank another loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lossbench.reference._checks import (
    check_class_index_target,
    check_floating,
    check_reduction,
    class_dim_of,
    compute_dtype,
)
from lossbench.reference.softmax import _focal_modulating_factor, _reduce_over_kept

# --- The slices --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassSlices:
    """Where the classes live: rank r of the group holds [offsets[r], offsets[r] + sizes[r]).

    ``offset`` and ``size`` are this rank's; ``n_classes`` is C = sum(sizes).
    """

    sizes: tuple[int, ...]
    rank: int

    @property
    def offsets(self) -> tuple[int, ...]:
        starts = [0]
        for size in self.sizes[:-1]:
            starts.append(starts[-1] + size)
        return tuple(starts)

    @property
    def offset(self) -> int:
        return self.offsets[self.rank]

    @property
    def size(self) -> int:
        return self.sizes[self.rank]

    @property
    def n_classes(self) -> int:
        return sum(self.sizes)


def class_slices(
    n_local_classes: int, process_group: dist.ProcessGroup, n_rows: int | None = None
) -> ClassSlices:
    """Every rank's slice of the classes, in group-rank order: one all-gather of p integers.

    Call it once (the slices of an lm_head do not change) and pass ``.offset`` as the losses'
    ``class_offset``. It synchronises the host with the device (it reads the gathered sizes). With
    ``n_rows``, it also checks that every rank has that many rows, and raises on every rank
    (``ValueError``, naming the ranks) when they differ or a rank holds no class.
    """
    world = dist.get_world_size(process_group)
    rank = dist.get_rank(process_group)
    # The backend's own device: NCCL gathers CUDA tensors, gloo CPU ones.
    device = _collective_device(process_group)
    mine = torch.tensor([n_local_classes, -1 if n_rows is None else n_rows], device=device)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine, group=process_group)
    sizes = tuple(int(entry[0]) for entry in gathered)
    rows = [int(entry[1]) for entry in gathered]
    if min(sizes) < 1:
        empty = [r for r, size in enumerate(sizes) if size < 1]
        raise ValueError(
            f"every rank must hold at least one class; ranks {empty} of the group hold none "
            f"(class counts by rank: {list(sizes)})"
        )
    if n_rows is not None and len(set(rows)) > 1:
        raise ValueError(
            f"every rank must pass the same rows of logits and targets; rows by rank: {rows}"
        )
    return ClassSlices(sizes, rank)


def _collective_device(process_group: dist.ProcessGroup) -> torch.device:
    """The device whose tensors the group's collectives take: CUDA for NCCL, else the CPU."""
    if dist.get_backend(process_group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --- Checks shared with kernels/vocab_parallel.py ----------------------------------------------


def check_shard_arguments(
    input: torch.Tensor,
    target: torch.Tensor,
    process_group: object,
    class_offset: int | None,
    **per_class: torch.Tensor | None,
) -> int:
    """Raise unless this rank's arguments suit a vocabulary-parallel loss; return the class dim.

    Checks what this rank can see alone, before any collective: logits with at least one class,
    a class-index target of the logits' shape less the class dimension (values are checked once C
    is known), per-class tensors that are 1-D, floating and of the logits' dtype, an initialised
    process group, and a non-negative integer ``class_offset``.
    """
    if not isinstance(process_group, dist.ProcessGroup):
        raise TypeError(
            "process_group must be a torch.distributed.ProcessGroup (dist.group.WORLD, or one "
            f"from dist.new_group), got {type(process_group).__name__}"
        )
    check_floating("input", input)
    class_dim = class_dim_of(input)
    if input.shape[class_dim] == 0:
        raise ValueError(
            f"this rank's slice of the logits holds no class (shape {tuple(input.shape)}); "
            "every rank must hold at least one"
        )
    if target.shape == input.shape and target.is_floating_point():
        raise NotImplementedError(
            "vocabulary-parallel losses take class-index targets; a target of class probabilities "
            "would be split over the ranks too: use the single-device loss"
        )
    check_class_index_target(input, target, check_values=False)
    if class_offset is not None and (
        isinstance(class_offset, bool) or not isinstance(class_offset, int) or class_offset < 0
    ):
        raise ValueError(f"class_offset must be an integer >= 0 or None, got {class_offset!r}")
    for name, tensor in per_class.items():
        if tensor is None:
            continue
        if tensor.dim() != 1:
            raise ValueError(
                f"{name} must be the full per-class vector of shape (C,) on every rank, got shape "
                f"{tuple(tensor.shape)}"
            )
        check_floating(name, tensor)
        if tensor.dtype != input.dtype:
            raise TypeError(f"{name} must have input's dtype {input.dtype}, got {tensor.dtype}")
    return class_dim


def check_against_class_count(
    n_classes: int,
    class_offset: int,
    n_local_classes: int,
    target: torch.Tensor,
    ignore_index: int,
    **per_class: torch.Tensor | None,
) -> None:
    """Raise once C is known unless this rank's slice, the per-class vectors and the labels fit.

    Reads ``target``'s values on the host: the kernels call it on the CPU only.
    """
    if class_offset + n_local_classes > n_classes:
        raise ValueError(
            f"this rank's classes [{class_offset}, {class_offset + n_local_classes}) reach past "
            f"the C = {n_classes} classes of all ranks: class_offset is wrong, or the slices "
            "overlap"
        )
    for name, tensor in per_class.items():
        if tensor is not None and tensor.shape[0] != n_classes:
            raise ValueError(
                f"{name} must have shape ({n_classes},), one entry for each class of every rank, "
                f"got shape {tuple(tensor.shape)}"
            )
    labels = target[target != ignore_index]
    out_of_range = labels[(labels < 0) | (labels >= n_classes)]
    if out_of_range.numel() > 0:
        raise ValueError(
            f"target holds class index {out_of_range[0].item()}, outside [0, {n_classes}) or "
            f"ignore_index={ignore_index} for the C = {n_classes} classes of all ranks"
        )


def resolve_class_offset(
    input: torch.Tensor,
    target: torch.Tensor,
    class_dim: int,
    process_group: dist.ProcessGroup,
    class_offset: int | None,
    **per_class: torch.Tensor | None,
) -> int:
    """``class_offset``, or this rank's offset worked out by ``class_slices`` when None.

    Raises ``ValueError`` unless each per-class tensor given has an entry for each of this rank's
    classes (they are the full (C,) vectors), before any other collective.
    """
    n_local = input.shape[class_dim]
    if class_offset is None:
        class_offset = class_slices(n_local, process_group, target.numel()).offset
    for name, tensor in per_class.items():
        if tensor is not None and class_offset + n_local > tensor.shape[0]:
            raise ValueError(
                f"{name} has {tensor.shape[0]} entries, but this rank holds classes "
                f"[{class_offset}, {class_offset + n_local}): {name} must be the full (C,) "
                "vector on every rank, or class_offset is wrong"
            )
    return class_offset


# --- Collectives with the autograd the losses need ------------------------------------------


class _SumOverRanks(torch.autograd.Function):
    """all-reduce SUM forward; identity backward.

    Every rank computes the same loss from the sum and differentiates it with the same upstream
    gradient, so each rank's share of the gradient is the one its local terms receive: no
    communication in backward (Megatron's reduce_from_tensor_model_parallel_region).
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, process_group: dist.ProcessGroup) -> torch.Tensor:
        summed = tensor.clone()
        dist.all_reduce(summed, op=dist.ReduceOp.SUM, group=process_group)
        return summed

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output, None


def _max_over_ranks(tensor: torch.Tensor, process_group: dist.ProcessGroup) -> torch.Tensor:
    """all-reduce MAX of a constant (the softmax's shift, which the loss does not depend on)."""
    result = tensor.detach().clone()
    dist.all_reduce(result, op=dist.ReduceOp.MAX, group=process_group)
    return result


# --- The global row statistics -----------------------------------------------------------------


@dataclass
class _RowStatistics:
    """Each row's statistics over the classes of every rank (shapes: the rows, class dim gone).

    ``row_max`` m (constant), ``log_sum`` = log sum_c exp(x_c - m), ``true_logit`` x_y (0 where
    ignored), ``smooth`` sum_c w_c (m - x_c) (label smoothing only), and C.
    """

    row_max: torch.Tensor
    log_sum: torch.Tensor
    true_logit: torch.Tensor
    smooth: torch.Tensor | None
    n_classes: int


def _row_statistics(
    input: torch.Tensor,
    class_dim: int,
    target: torch.Tensor,
    kept: torch.Tensor,
    class_offset: int,
    local_weight: torch.Tensor | None,
    smoothing: bool,
    process_group: dist.ProcessGroup,
) -> _RowStatistics:
    """The global statistics of each row from this rank's slice: the two all-reduces."""
    n_local = input.shape[class_dim]
    local_max = input.detach().amax(class_dim, keepdim=True)
    row_max = _max_over_ranks(local_max, process_group)  # all-reduce 1: MAX, N values
    holds_max = local_max == row_max
    shifted = input - row_max  # <= 0; m is a constant, so x_c's gradient flows through shifted_c

    # This rank's share of rest = sum_c exp(x_c - m) - 1: the classes other than its top one,
    # plus its top one as expm1(x_top - m) where that is the global max (0 in value, derivative
    # p_top, so nothing cancels) and as exp(x_top - m) elsewhere.
    top = input.detach().argmax(class_dim, keepdim=True)
    top_shifted = shifted.gather(class_dim, top)
    others = shifted.exp().scatter(class_dim, top, 0.0).sum(class_dim, keepdim=True)
    top_term = torch.where(holds_max, torch.expm1(top_shifted), top_shifted.exp())
    rest_share = others + top_term

    # The true-class logit, from the rank whose slice holds it (0 elsewhere, and where ignored).
    local_target = target - class_offset
    held = kept & (local_target >= 0) & (local_target < n_local)
    safe_local = torch.where(held, local_target, 0).unsqueeze(class_dim)
    true_share = torch.where(held.unsqueeze(class_dim), input.gather(class_dim, safe_local), 0.0)

    shares = [rest_share, holds_max.to(input.dtype), true_share]
    if smoothing:
        gap = (
            -shifted if local_weight is None else -shifted * _along(local_weight, input, class_dim)
        )
        shares.append(gap.sum(class_dim, keepdim=True))
    stacked = torch.cat(shares, class_dim)
    n_shares = stacked.shape[class_dim]
    payload = torch.cat([stacked.flatten(), stacked.new_tensor([n_local])])
    summed = _SumOverRanks.apply(payload, process_group)  # all-reduce 2: SUM, 3N+1 or 4N+1
    n_classes = int(summed[-1].item())
    totals = summed[:-1].view(stacked.shape).split(1, class_dim)
    # The count of ranks at the max, less 1, is an exact integer: rest never forms 1 + rest - 1.
    rest = totals[0] + (totals[1] - 1)
    return _RowStatistics(
        row_max.squeeze(class_dim),
        torch.log1p(rest).squeeze(class_dim),
        totals[2].squeeze(class_dim),
        totals[3].squeeze(class_dim) if n_shares == 4 else None,
        n_classes,
    )


def _along(per_class: torch.Tensor, input: torch.Tensor, class_dim: int) -> torch.Tensor:
    """View a (V,) tensor to broadcast along ``input``'s class dimension."""
    shape = [1] * input.dim()
    shape[class_dim] = per_class.numel()
    return per_class.view(shape)


# --- The losses ----------------------------------------------------------------------------------


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss_scale: float = 0.0,
    process_group: dist.ProcessGroup,
    class_offset: int | None = None,
) -> torch.Tensor:
    """Cross-entropy of logits split by class over ``process_group``; see the module docstring.

    The arguments and result of ``reference.softmax.cross_entropy`` (class-index targets), with
    ``input`` this rank's slice of the classes, ``target`` global class indices and ``weight`` the
    full (C,) vector. ``label_smoothing`` spreads eps over all C classes: eps / C each, with the
    'mean' denominator sum_i w_{y_i} of the whole batch, exactly as on one device.

    Raises:
        ValueError: as reference.softmax.cross_entropy, plus a slice or label that does not fit
            the C classes of all ranks, or a bad ``class_offset``.
        TypeError: as reference.softmax.cross_entropy, or ``process_group`` not a ProcessGroup.
        NotImplementedError: class-probability targets.
    """
    class_dim = check_shard_arguments(input, target, process_group, class_offset, weight=weight)
    check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if not 0.0 <= z_loss_scale < math.inf:
        raise ValueError(f"z_loss_scale must be finite and >= 0, got {z_loss_scale}")
    class_offset = resolve_class_offset(
        input, target, class_dim, process_group, class_offset, weight=weight
    )
    dtype = compute_dtype(input.dtype)
    x = input.to(dtype)
    full_weight = None if weight is None else weight.to(dtype)
    local_weight = None
    if full_weight is not None:
        local_weight = full_weight[class_offset : class_offset + x.shape[class_dim]]
    kept = target != ignore_index
    stats = _row_statistics(
        x, class_dim, target, kept, class_offset, local_weight, label_smoothing > 0, process_group
    )
    check_against_class_count(
        stats.n_classes, class_offset, x.shape[class_dim], target, ignore_index, weight=weight
    )

    # log p_y = (x_y - m) - log sum_c exp(x_c - m); ignored rows read x_y = 0 and are masked.
    log_p_true = (stats.true_logit - stats.row_max) - stats.log_sum
    safe_target = target.masked_fill(~kept, 0)
    if full_weight is None:
        target_weight = kept.to(dtype)
    else:
        target_weight = torch.where(kept, full_weight[safe_target], 0.0)
    weight_sum = target_weight.sum()
    nll = torch.where(kept, -target_weight * log_p_true, 0.0)
    loss = _reduce_over_kept(nll, reduction, weight_sum)
    if label_smoothing > 0:
        # -sum_c w_c log p_c = sum_c w_c (m - x_c) + W log sum_c exp(x_c - m), W = sum_c w_c:
        # non-negative terms only.
        total_weight = stats.n_classes if full_weight is None else full_weight.sum()
        smooth = torch.where(kept, stats.smooth + total_weight * stats.log_sum, 0.0)
        smooth = _reduce_over_kept(smooth, reduction, weight_sum)
        loss = (1 - label_smoothing) * loss + (label_smoothing / stats.n_classes) * smooth
    if z_loss_scale != 0.0:
        log_sum_exp = stats.row_max + stats.log_sum
        z_loss = torch.where(kept, z_loss_scale * log_sum_exp**2, 0.0)
        loss = loss + _reduce_over_kept(z_loss, reduction, kept.sum())
    return loss.to(input.dtype)


def softmax_focal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    alpha: float | torch.Tensor | None = None,
    gamma: float = 2.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    *,
    process_group: dist.ProcessGroup,
    class_offset: int | None = None,
) -> torch.Tensor:
    """Focal loss of logits split by class over ``process_group``; see the module docstring.

    The arguments and result of ``reference.softmax.softmax_focal_loss``, with ``input`` this
    rank's slice of the classes, ``target`` global class indices and a tensor ``alpha`` the full
    (C,) vector.

    Raises:
        ValueError: as reference.softmax.softmax_focal_loss, plus a slice or label that does not
            fit the C classes of all ranks, or a bad ``class_offset``.
        TypeError: as reference.softmax.softmax_focal_loss, or ``process_group`` not a
            ProcessGroup.
    """
    alpha_tensor = alpha if isinstance(alpha, torch.Tensor) else None
    class_dim = check_shard_arguments(
        input, target, process_group, class_offset, alpha=alpha_tensor
    )
    check_reduction(reduction)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if alpha_tensor is not None and (alpha_tensor < 0).any():
        raise ValueError("alpha must be >= 0 for every class; use alpha=None for no weighting")
    if alpha_tensor is None and alpha is not None and alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}; use alpha=None for no weighting")
    class_offset = resolve_class_offset(
        input, target, class_dim, process_group, class_offset, alpha=alpha_tensor
    )
    dtype = compute_dtype(input.dtype)
    kept = target != ignore_index
    stats = _row_statistics(
        input.to(dtype), class_dim, target, kept, class_offset, None, False, process_group
    )
    check_against_class_count(
        stats.n_classes,
        class_offset,
        input.shape[class_dim],
        target,
        ignore_index,
        alpha=alpha_tensor,
    )
    log_p_true = (stats.true_logit - stats.row_max) - stats.log_sum
    one_minus_p = -torch.expm1(log_p_true)
    loss = -_focal_modulating_factor(one_minus_p, gamma) * log_p_true
    if alpha_tensor is not None:
        loss = alpha_tensor.to(dtype)[target.masked_fill(~kept, 0)] * loss
    elif alpha is not None:
        loss = alpha * loss
    loss = torch.where(kept, loss, 0.0)
    return _reduce_over_kept(loss, reduction, kept.sum()).to(input.dtype)


__all__ = ["ClassSlices", "class_slices", "cross_entropy", "softmax_focal_loss"]
