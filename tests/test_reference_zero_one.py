"""reference/zero_one.py against a plain-Python count of errors and the article's example.

The expectation is computed element by element in Python (argmax as Python's ``max``, which also
keeps the first of tied maxima), independent of the torch ops the reference uses.
"""

from __future__ import annotations

import pytest
import torch

from lossbench.reference.tolerance import assert_close
from lossbench.reference.zero_one import ZeroOneLoss, zero_one_loss

# Seven classes (not a power of two); (N, C, H, W) has spatial dims; (C,) is the unbatched form.
N_CLASSES = 7
MULTI_CLASS_SHAPES = {"N,C": (40, N_CLASSES), "N,C,H,W": (4, N_CLASSES, 3, 5), "C": (N_CLASSES,)}
FLOATING = (torch.float64, torch.float32, torch.bfloat16)


def class_indices_for(shape: tuple[int, ...]) -> torch.Tensor:
    class_dim = 0 if len(shape) == 1 else 1
    return torch.randint(0, N_CLASSES, shape[:class_dim] + shape[class_dim + 1 :])


def python_multi_class_errors(logits: torch.Tensor, target: torch.Tensor) -> list[float]:
    """1.0 per sample whose first highest-scoring class is not its label, in target's order."""
    class_dim = 0 if logits.dim() == 1 else 1
    rows = logits.double().movedim(class_dim, -1).reshape(-1, logits.shape[class_dim]).tolist()
    labels = target.reshape(-1).tolist()
    return [
        float(max(range(len(row)), key=row.__getitem__) != label)
        for row, label in zip(rows, labels, strict=True)
    ]


@pytest.mark.parametrize("dtype", FLOATING, ids=str)
@pytest.mark.parametrize("shape", MULTI_CLASS_SHAPES.values(), ids=MULTI_CLASS_SHAPES.keys())
def test_multi_class_matches_python_count(shape, dtype):
    logits = torch.randn(shape, dtype=torch.float64).to(dtype)
    target = class_indices_for(shape)
    errors = python_multi_class_errors(logits, target)

    mean = zero_one_loss(logits, target)
    assert mean.dtype == dtype and mean.shape == ()
    expected_rate = torch.tensor(sum(errors) / len(errors), dtype=torch.float64)
    assert_close(mean, expected_rate, dtype, "error rate")
    assert zero_one_loss(logits, target, "sum").item() == sum(errors)
    per_sample = zero_one_loss(logits, target, "none")
    assert per_sample.shape == target.shape
    assert per_sample.reshape(-1).tolist() == errors


@pytest.mark.parametrize("target_dtype", (torch.bool, torch.float32, torch.int64), ids=str)
@pytest.mark.parametrize("shape", [(50,), (16, 6), (3, 4, 5)], ids=("binary", "N,L", "N,L,d"))
def test_binary_and_multi_label_match_python_count(shape, target_dtype):
    logits = torch.randn(shape, dtype=torch.float64)
    target = (torch.rand(shape) < 0.4).to(target_dtype)
    errors = [
        float((score > 0) != bool(label))
        for score, label in zip(
            logits.reshape(-1).tolist(), target.reshape(-1).tolist(), strict=True
        )
    ]

    expected_rate = torch.tensor(sum(errors) / len(errors), dtype=torch.float64)
    assert_close(zero_one_loss(logits, target), expected_rate, torch.float64, "error rate")
    per_label = zero_one_loss(logits, target, "none")
    assert per_label.shape == shape
    assert per_label.reshape(-1).tolist() == errors
    assert zero_one_loss(logits, target, "sum").item() == sum(errors)


def test_article_example():
    """Four samples, three classes: argmax gives [0, 1, 2, 0] against labels [0, 1, 1, 2]."""
    logits = torch.tensor([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3], [1.2, 0.4, 3.1], [0.9, 0.2, 0.1]])
    labels = torch.tensor([0, 1, 1, 2])
    assert zero_one_loss(logits, labels).item() == 0.5
    assert torch.equal(zero_one_loss(logits, labels, "none"), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert zero_one_loss(logits, labels, "sum").item() == 2.0


def test_ties_and_zero_logits():
    """argmax ties go to the lowest class; a logit of exactly 0 predicts the negative class."""
    tied = torch.tensor([[1.0, 3.0, 3.0], [3.0, 3.0, 3.0]])
    assert torch.equal(zero_one_loss(tied, torch.tensor([1, 0]), "none"), torch.zeros(2))
    assert torch.equal(zero_one_loss(tied, torch.tensor([2, 2]), "none"), torch.ones(2))
    zero = torch.zeros(2)
    assert torch.equal(
        zero_one_loss(zero, torch.tensor([0.0, 1.0]), "none"), torch.tensor([0.0, 1.0])
    )


def test_result_is_detached_and_typed():
    logits = torch.randn(8, N_CLASSES, requires_grad=True)
    target = class_indices_for((8, N_CLASSES))
    loss = zero_one_loss(logits, target)
    assert not loss.requires_grad and loss.dtype == torch.float32
    integer_scores = torch.randint(-3, 4, (8, N_CLASSES))
    assert zero_one_loss(integer_scores, target).dtype == torch.float32
    assert zero_one_loss(integer_scores, integer_scores > 0).item() == 0.0


def test_module_matches_function():
    logits = torch.randn(4, N_CLASSES, 2, dtype=torch.float64)
    target = class_indices_for((4, N_CLASSES, 2))
    for reduction in ("none", "mean", "sum"):
        assert torch.equal(
            ZeroOneLoss(reduction)(logits, target), zero_one_loss(logits, target, reduction)
        )


LOGITS = torch.randn(4, N_CLASSES)


@pytest.mark.parametrize(
    ("call", "exception", "pattern"),
    [
        (lambda: zero_one_loss(LOGITS, torch.tensor([0, 1, 2, 3]), "avg"), ValueError, "avg"),
        (lambda: ZeroOneLoss("avg"), ValueError, "avg"),
        (lambda: zero_one_loss(LOGITS, torch.tensor([0, 1, 2])), ValueError, r"\(4,\).*\(3,\)"),
        (lambda: zero_one_loss(LOGITS, torch.tensor([0, 7, 2, 1])), ValueError, "class index 7"),
        (lambda: zero_one_loss(LOGITS, torch.tensor([0, -1, 2, 1])), ValueError, "class index -1"),
        (lambda: zero_one_loss(LOGITS, torch.tensor([0.0, 1, 2, 1])), TypeError, "integer"),
        (
            lambda: zero_one_loss(LOGITS[0], torch.tensor([1.0, 0, 2, 0, 0, 0, 1])),
            ValueError,
            "0 and 1",
        ),
    ],
    ids=(
        "reduction",
        "module reduction",
        "target shape",
        "index = C",
        "index < 0",
        "float indices",
        "binary label 2",
    ),
)
def test_bad_input_raises(call, exception, pattern):
    with pytest.raises(exception, match=pattern):
        call()
