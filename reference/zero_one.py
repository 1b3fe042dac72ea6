"""The 0-1 loss: 1 where the predicted label differs from the true one, else 0.

A statistic like accuracy (mean 0-1 loss = 1 - accuracy), not a training loss: it is piecewise
constant, so it has no useful gradient and is returned detached.

Two readings, chosen by the target's shape:

- multi-class: ``input`` holds logits of shape (N, C), (N, C, d1, ...) or (C,), and ``target``
  holds class indices in [0, C) with ``input``'s shape without the class dimension (dim 1, or
  dim 0 when unbatched). l_i = [argmax_c input_ic != target_i]; ties go to the lowest class
  index, as ``torch.argmax`` breaks them.
- binary and multi-label: ``target`` has ``input``'s shape and holds 0 and 1 (bool, integer or
  floating); every element is its own binary problem. l_i = [(input_i > 0) != target_i], so a
  logit of exactly 0 predicts the negative class.

Reductions: 'none' returns l (the target's shape), 'sum' the number of errors, 'mean' the error
rate (errors / number of predictions).
"""

from __future__ import annotations

import torch
from torch import nn

from lossbench.reference._checks import check_reduction, reduce
from lossbench.reference.softmax import check_class_index_target


def zero_one_loss(
    input: torch.Tensor, target: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """0-1 loss of scores ``input`` against ``target`` (see the module docstring for the shapes).

    Args:
        input: logits or any real scores; (N, C), (N, C, d1, ...) or (C,) for multi-class, any
            shape for binary and multi-label.
        target: class indices (integer, ``input``'s shape without the class dimension) or
            binary labels (``input``'s shape, values 0 and 1).
        reduction: 'none', 'mean' (error rate) or 'sum' (error count).

    Returns:
        a tensor without grad, of ``input``'s dtype when floating, float32 otherwise.

    Raises:
        ValueError: bad reduction, mismatched shapes, class index outside [0, C), binary label
            other than 0 or 1.
        TypeError: a non-integer class-index target.
    """
    check_reduction(reduction)
    if target.shape == input.shape:
        if not ((target == 0) | (target == 1)).all():
            bad = target[(target != 0) & (target != 1)][0].item()
            raise ValueError(f"binary or multi-label target must hold 0 and 1 only, found {bad}")
        errors = (input > 0) != target.bool()
    else:
        class_dim = check_class_index_target(input, target)
        errors = input.argmax(dim=class_dim) != target
    result_dtype = input.dtype if input.is_floating_point() else torch.float32
    return reduce(errors.to(result_dtype), reduction)


class ZeroOneLoss(nn.Module):
    """Module form of :func:`zero_one_loss`."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        self.reduction = reduction

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return zero_one_loss(input, target, self.reduction)
