"""Linear cross-entropy written plainly: the classifier layer, then the cross-entropy.

The float64 oracle for kernels/linear.py. ``linear_cross_entropy`` is torch 2.14's
``F.linear_cross_entropy`` (its signature and semantics) plus two options of language-model
training: PaLM's z-loss, as in :func:`lossbench.reference.cross_entropy`, and Gemma 2's logit
soft-capping. It materialises the logits: it is the definition, not a way to save memory.

Shapes. ``input`` holds the hidden states, (N, D), (..., D) or (D,); ``linear_weight`` is (V, D),
as ``nn.Linear.weight`` of a layer from D features to V classes; ``linear_bias`` (V,). A row is one
position of the leading dimensions of ``input``: D features, V logits, one target. The target
holds class indices with ``input``'s shape without its last dimension, or class probabilities with
the shape of the logits, (..., V).

Per row, with x the row's features and y its target:

    a = linear_weight @ x + linear_bias               (V logits)
    z = softcap * tanh(a / softcap)                   (Gemma 2; z = a when softcap is None)
    loss = cross_entropy(z, y, weight, ignore_index, label_smoothing, z_loss_scale)

with :func:`lossbench.reference.cross_entropy`'s semantics for every option and reduction ('mean'
divides by the summed weight of the non-ignored targets; z-loss adds z_loss_scale * lse(z)^2 per
non-ignored row, averaged over their count).

Precision. fp16 and bf16 inputs are computed in float32 (the linear layer included) and the loss is
rounded to the input's dtype once, at the end, as in reference/softmax.py.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from lossbench.reference._checks import check_linear_layer, check_reduction, compute_dtype
from lossbench.reference.softmax import cross_entropy


def soft_cap(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Gemma 2's soft-capping ``softcap * tanh(logits / softcap)``; the logits when None."""
    if softcap is None:
        return logits
    return softcap * torch.tanh(logits / softcap)


def linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss_scale: float = 0.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """Cross-entropy of the logits ``linear(input, linear_weight, linear_bias)``; mirrors
    ``F.linear_cross_entropy`` (torch 2.14, without its ``options``).

    Args:
        input: hidden states, floating, shape (N, D), (..., D) or (D,).
        linear_weight: (V, D), ``input``'s dtype: the classifier, as ``nn.Linear.weight``.
        target: class indices, integer, ``input``'s shape without its last dimension, in [0, V)
            or equal to ``ignore_index``; or class probabilities, floating, shape (..., V).
        linear_bias: (V,), ``input``'s dtype, or None.
        weight: per-class weight (V,), ``input``'s dtype, or None.
        ignore_index: class-index targets equal to it add 0 and are not counted by 'mean'
            (torch's default None means -100 for class indices: the same here).
        reduction: 'none' (per-row losses, the target's shape, or ``input``'s shape without D
            for probabilities), 'mean' or 'sum', as :func:`lossbench.reference.cross_entropy`.
        label_smoothing: eps in [0, 1], as torch.
        z_loss_scale: z >= 0, not in torch: PaLM's z-loss on the (capped) logits, as
            :func:`lossbench.reference.cross_entropy`; class indices only.
        softcap: None, or c > 0: the logits become ``c * tanh(logits / c)`` (Gemma 2) before the
            loss; not in torch.

    Returns:
        the loss in ``input``'s dtype: a scalar for 'mean' and 'sum', per-row losses for 'none'.

    Raises:
        ValueError: shapes that do not fit (named), softcap <= 0, and every ``ValueError`` of
            :func:`lossbench.reference.cross_entropy` (options, labels out of range).
        TypeError: non-floating tensors, tensors of different dtypes, an integer target that is
            not of class indices.
    """
    is_probabilities = check_linear_layer(
        input, linear_weight, target, linear_bias, weight, softcap
    )
    check_reduction(reduction)
    n_classes = linear_weight.shape[0]
    dtype = compute_dtype(input.dtype)
    logits = functional.linear(
        input.to(dtype),
        linear_weight.to(dtype),
        None if linear_bias is None else linear_bias.to(dtype),
    )
    logits = soft_cap(logits, softcap)
    rows_shape = input.shape[:-1]
    if input.dim() > 1:
        # cross_entropy wants the classes in dim 1: rows become one batch dimension.
        logits = logits.reshape(-1, n_classes)
        target = target.reshape(-1, n_classes) if is_probabilities else target.reshape(-1)
    loss = cross_entropy(
        logits,
        target.to(dtype) if is_probabilities else target,
        None if weight is None else weight.to(dtype),
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss_scale=z_loss_scale,
    )
    if reduction == "none":
        loss = loss.reshape(rows_shape)
    return loss.to(input.dtype)


class LinearCrossEntropyLoss(nn.Module):
    """Module form of :func:`linear_cross_entropy`, as torch 2.14's ``nn.LinearCrossEntropyLoss``:
    it owns the classifier, ``self.linear`` (an ``nn.Linear`` from ``in_features`` to
    ``num_classes``), and takes ``forward(input, target)``.

    torch's ``out_features`` (a K-dimensional loss) and ``options`` (its chunking) are left out;
    ``z_loss_scale`` and ``softcap`` are added. ``weight`` is a buffer, as in torch's module.
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        z_loss_scale: float = 0.0,
        softcap: float | None = None,
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        self.linear = nn.Linear(in_features, num_classes, bias=bias, device=device, dtype=dtype)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss_scale = z_loss_scale
        self.softcap = softcap

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return linear_cross_entropy(
            input,
            self.linear.weight,
            target,
            linear_bias=self.linear.bias,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            z_loss_scale=self.z_loss_scale,
            softcap=self.softcap,
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.linear.in_features}, num_classes={self.linear.out_features}, "
            f"bias={self.linear.bias is not None}, reduction={self.reduction}, "
            f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, "
            f"z_loss_scale={self.z_loss_scale}, softcap={self.softcap}"
        )
