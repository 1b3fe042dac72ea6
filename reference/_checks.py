"""Argument checks and the reduction, shared by every loss in reference/ and kernels/."""

from __future__ import annotations

import math
import numbers

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


def check_same_device(**tensors: torch.Tensor | None) -> None:
    """Raise ``ValueError`` unless every tensor given lives on one device, naming each.

    ``None`` entries (absent optional arguments) are ignored.
    """
    devices = {name: tensor.device for name, tensor in tensors.items() if tensor is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")


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
    if check_values:
        check_class_index_values(target, input.shape[dim], ignore_index)
    return dim


def check_class_index_values(
    target: torch.Tensor, n_classes: int, ignore_index: int | None = None
) -> None:
    """Raise ``ValueError``, naming the first bad value, unless every class index in ``target``
    lies in [0, ``n_classes``) or equals ``ignore_index``. Reads ``target`` on the host."""
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


def check_no_ignore_index_for_probabilities(ignore_index: int) -> None:
    """Raise as torch does for an ``ignore_index`` >= 0 with a target of class probabilities.

    torch accepts a negative one (its default -100 among them) and ignores it: nothing there is
    an index to compare with.
    """
    if ignore_index >= 0:
        raise ValueError(
            f"ignore_index is not supported for floating point target (got ignore_index="
            f"{ignore_index}; a target of input's shape holds class probabilities)"
        )


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


# --- The focal losses' parameters: one rule for both, at construction and at every call ------
#
# gamma, the focusing exponent on (1 - p_t): a finite number >= 0 (nan, inf, negative raise).
# alpha, the class weight: a finite number in [0, 1] (or, for the softmax loss, a (C,) tensor
# whose entries lie in [0, 1]). "No weighting" is spelled as each loss's API spells it: None for
# softmax_focal_loss, any negative number for sigmoid_focal_loss (torchvision's alpha=-1), so a
# negative alpha raises in the softmax loss only. nan and inf raise in both.


def check_focal_options(
    alpha: float | torch.Tensor | None, gamma: float, *, negative_alpha_means_none: bool
) -> None:
    """Raise ``ValueError`` unless ``gamma`` and a number ``alpha`` follow the rule above.

    A tensor ``alpha`` is checked here for nothing but being a tensor: its shape and dtype by
    ``check_per_class``, its values by ``check_alpha_values`` (which reads them).
    """
    # Comparisons only (nan fails every one): under torch.compile(dynamic=True) a number may
    # arrive as a SymFloat, which math.isfinite cannot trace and a comparison guards on.
    if not (_is_number(gamma) and 0 <= gamma < math.inf):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    if alpha is None or isinstance(alpha, torch.Tensor):
        return
    if not (_is_number(alpha) and -math.inf < alpha < math.inf):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}")
    if negative_alpha_means_none and alpha < 0:
        return
    if not 0 <= alpha <= 1:
        if negative_alpha_means_none:
            raise ValueError(f"alpha must be in [0, 1], or negative for no weighting; got {alpha}")
        raise ValueError(f"alpha must be in [0, 1], got {alpha}; use alpha=None for no weighting")


def _is_number(value: object) -> bool:
    """A real number: int, float, numpy's, or torch.compile's symbolic ones; not a bool."""
    return isinstance(value, (numbers.Real, torch.SymInt, torch.SymFloat)) and not isinstance(
        value, bool
    )


def check_alpha_values(alpha: torch.Tensor) -> None:
    """Raise ``ValueError`` unless every entry of a per-class ``alpha`` lies in [0, 1] (nan fails).

    This reads the values: on a GPU that is a host synchronisation, which the kernels skip.
    """
    if not bool(((alpha >= 0) & (alpha <= 1)).all()):
        raise ValueError(
            "alpha must lie in [0, 1] for every class; use alpha=None for no weighting"
        )


def check_linear_layer(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    linear_bias: torch.Tensor | None,
    weight: torch.Tensor | None,
    softcap: float | None,
) -> bool:
    """Raise unless the arguments of a linear cross-entropy fit together; return whether
    ``target`` holds class probabilities (a floating target) rather than class indices.

    ``input`` (..., D) with at least one dimension; ``linear_weight`` (V, D) with V >= 1;
    ``linear_bias`` and ``weight`` (V,); all floating and of ``input``'s dtype (``TypeError``).
    ``target``: class indices of shape ``input.shape[:-1]`` or probabilities of shape
    ``input.shape[:-1] + (V,)``; shapes that do not fit raise ``ValueError`` naming them.
    ``softcap``: None or finite > 0. The values of an index target are not read here.
    """
    check_floating("input", input)
    if input.dim() == 0:
        raise ValueError("input must have a feature dimension, shape (D,), (N, D) or (..., D)")
    if linear_weight.dim() != 2:
        raise ValueError(
            f"linear_weight must have shape (V, D), got shape {tuple(linear_weight.shape)}"
        )
    n_classes, n_features = linear_weight.shape
    if n_classes == 0:
        raise ValueError("linear_weight must have at least one class (row), got shape (0, D)")
    if input.shape[-1] != n_features:
        raise ValueError(
            f"input's last dimension must be linear_weight's D = {n_features}, got input of "
            f"shape {tuple(input.shape)} and linear_weight of shape {tuple(linear_weight.shape)}"
        )
    for name, tensor in (("linear_weight", linear_weight), ("linear_bias", linear_bias)):
        if tensor is not None:
            check_floating(name, tensor)
            if tensor.dtype != input.dtype:
                raise TypeError(f"{name} must have input's dtype {input.dtype}, got {tensor.dtype}")
    for name, tensor in (("linear_bias", linear_bias), ("weight", weight)):
        if tensor is not None and tensor.shape != (n_classes,):
            raise ValueError(
                f"{name} must have shape ({n_classes},), one entry per class (row of "
                f"linear_weight), got shape {tuple(tensor.shape)}"
            )
    if weight is not None:
        check_floating("weight", weight)
        if weight.dtype != input.dtype:
            raise TypeError(f"weight must have input's dtype {input.dtype}, got {weight.dtype}")
    if softcap is not None and not 0.0 < softcap < math.inf:
        raise ValueError(f"softcap must be None or finite and > 0, got {softcap}")
    rows_shape = input.shape[:-1]
    is_probabilities = target.is_floating_point()
    expected = torch.Size((*rows_shape, n_classes)) if is_probabilities else rows_shape
    if target.shape != expected:
        what = "class probabilities" if is_probabilities else "class indices"
        raise ValueError(
            f"a target of {what} must have shape {tuple(expected)} for input of shape "
            f"{tuple(input.shape)} and linear_weight of shape {tuple(linear_weight.shape)}, "
            f"got target of shape {tuple(target.shape)}"
        )
    if not is_probabilities and (target.dtype == torch.bool or target.is_complex()):
        raise TypeError(f"target of class indices must have an integer dtype, got {target.dtype}")
    return is_probabilities
