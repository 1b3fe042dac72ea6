"""The article's digit classifier, trained once per loss implementation: the end-to-end check.

The source article ends with a small CNN for handwritten digits (its code does not run: it never
flattens before the first linear layer and sizes that layer 16*14*14*14). This package rebuilds
it correctly and trains it with every implementation of each loss, ``torch``, ``reference`` and
``triton``, from the same initial weights, on the same data in the same order, in float32. If the
fused kernels compute the loss and its gradient as torch does, the curves lie on top of each other.

Three task types from the article, on the same images (``data.TASKS``):

- ``multiclass``: which digit (10 outputs), with cross-entropy, with softmax focal loss, and with
  the linear cross-entropy, which replaces the CNN's last layer and the cross-entropy by one loss
  taking the hidden features and that layer's weight and bias;
- ``binary``: is the digit 5 or more (1 output), with BCE-with-logits and with sigmoid focal loss;
- ``multilabel``: {even, 5 or more, prime} at once (3 outputs), with the same two sigmoid losses.

The losses and their options are the harness's (lossbench.bench.implementations): reduction
'mean', focal losses with alpha 0.25 and gamma 2, torch's softmax focal loss written in plain
torch there.

The modules: ``data`` (the digits and the tasks), ``model`` (the CNN and its optimizer),
``train`` (training and evaluation), ``results`` (convergence.csv, convergence.png and the
terminal summary) and ``cli`` (``lossbench convergence``).
"""


class ConvergenceError(RuntimeError):
    """A run cannot start: an implementation or the data is missing, or an option is wrong."""
