"""Argument checks and the reduction, shared by every loss in reference/ and kernels/."""

from __future__ import annotations

import torch

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str) -> None:
    """Raise ``ValueError`` unless ``reduction`` is one of 'none', 'mean', 'sum'."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_floating(name: str, tensor: torch.Tensor) -> None:
    """Raise ``TypeError`` unless ``tensor`` has a floating-point dtype."""
    if not torch.is_floating_point(tensor):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")


def reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply 'none' (the elementwise loss), 'mean' or 'sum' to ``loss``."""
    check_reduction(reduction)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a loss computes in: float32 for fp16 and bf16, ``dtype`` itself otherwise.

    Results are rounded to the 16-bit dtype once, at the end, as torch's kernels do: rounding
    every intermediate to 8 or 11 bits would make the oracle the largest error in a comparison.
    """
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def class_dim_of(input: torch.Tensor) -> int:
    """The class dimension of logits ``input``: 0 when unbatched (C,), otherwise 1."""
    if input.dim() == 0:
        raise ValueError(
            "input must have a class dimension, shape (C,), (N, C) or (N, C, d1, ...); got shape ()"
        )
    return 0 if input.dim() == 1 else 1


def check_class_index_target(
    input: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int | None = None,
    *,
    check_values: bool = True,
) -> int:
    """Raise unless ``target`` holds valid class indices for the logits ``input``.

    Returns the class dimension of ``input`` (1, or 0 when unbatched).

    ``target`` must have ``input``'s shape without the class dimension (``ValueError`` naming both
    shapes) and a non-bool integer dtype (``TypeError``). With ``check_values``, every value must
    lie in [0, C) or equal ``ignore_index`` (``ValueError`` naming the first bad value): that reads
    ``target`` on the host, a synchronisation the GPU kernels avoid by passing False.
    """
    dim = class_dim_of(input)
    expected_shape = input.shape[:dim] + input.shape[dim + 1 :]
    if target.shape != expected_shape:
        raise ValueError(
            f"target of class indices must have shape {tuple(expected_shape)} for input of shape "
            f"{tuple(input.shape)}, got target of shape {tuple(target.shape)}"
        )
    if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
        raise TypeError(f"target of class indices must have an integer dtype, got {target.dtype}")
    if not check_values:
        return dim
    n_classes = input.shape[dim]
    labels = target if ignore_index is None else target[target != ignore_index]
    out_of_range = labels[(labels < 0) | (labels >= n_classes)]
    if out_of_range.numel() > 0:
        allowed = f"[0, {n_classes})"
        if ignore_index is not None:
            allowed += f" or ignore_index={ignore_index}"
        raise ValueError(
            f"target holds class index {out_of_range[0].item()}, outside {allowed} "
            f"for input with {n_classes} classes"
        )
    return dim


def check_per_class(name: str, per_class: torch.Tensor, input: torch.Tensor) -> None:
    """Raise unless ``per_class`` is a (C,) tensor of logits ``input``'s floating dtype."""
    n_classes = input.shape[class_dim_of(input)]
    if per_class.shape != (n_classes,):
        raise ValueError(
            f"{name} must have shape ({n_classes},), one entry per class of input of shape "
            f"{tuple(input.shape)}, got shape {tuple(per_class.shape)}"
        )
    check_floating(name, per_class)
    if per_class.dtype != input.dtype:
        raise TypeError(f"{name} must have input's dtype {input.dtype}, got {per_class.dtype}")


def check_broadcasts_to(name: str, tensor: torch.Tensor, shape: torch.Size) -> None:
    """Raise ``ValueError`` unless ``tensor`` broadcasts to ``shape`` without enlarging it.

    That is torch's rule for the ``weight`` and ``pos_weight`` of the binary cross-entropies.
    """
    try:
        broadcast_shape = torch.broadcast_shapes(tensor.shape, shape)
    except RuntimeError:
        broadcast_shape = None
    if broadcast_shape != shape:
        raise ValueError(
            f"{name} of shape {tuple(tensor.shape)} does not broadcast to the input shape "
            f"{tuple(shape)}"
        )


def check_sigmoid_focal_options(alpha: float, gamma: float) -> None:
    """gamma >= 0; alpha <= 1, a negative alpha meaning no weighting. nan fails both."""
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if not alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], or negative for no weighting; got {alpha}")
