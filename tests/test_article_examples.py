"""The source article's worked examples, reproduced by the reference losses.

Each example is the article's figure to the four decimals it prints; the reference must land within
half a unit of the last printed place. (The softmax examples live with the softmax tests.)
"""

from __future__ import annotations

import torch

from lossbench.reference.sigmoid import BCELoss, BCEWithLogitsLoss, binary_cross_entropy

# The article prints its results to 4 decimals: agreeing to the printed figure means within half
# a unit of the last place.
PRINTED_PRECISION = 0.5e-4


def test_bce_of_probabilities_is_0_3757() -> None:
    """BCELoss of probabilities [0.9, 0.1, 0.4] with labels [1, 0, 1] is 0.3757.

    By hand: -(log 0.9 + log 0.9 + log 0.4) / 3 = (0.1054 + 0.1054 + 0.9163) / 3 = 0.3757.
    """
    probabilities = torch.tensor([0.9, 0.1, 0.4], dtype=torch.float64)
    labels = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)

    assert abs(binary_cross_entropy(probabilities, labels).item() - 0.3757) < PRINTED_PRECISION
    assert abs(BCELoss()(probabilities, labels).item() - 0.3757) < PRINTED_PRECISION


def test_bce_with_logits_of_the_same_logits_is_0_3757() -> None:
    """BCEWithLogitsLoss on logit(p) gives the same 0.3757: the sigmoid is applied inside."""
    probabilities = torch.tensor([0.9, 0.1, 0.4], dtype=torch.float64)
    labels = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)

    loss = BCEWithLogitsLoss()(torch.logit(probabilities), labels)

    assert abs(loss.item() - 0.3757) < PRINTED_PRECISION
