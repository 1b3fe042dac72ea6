"""The kernels as PyTorch ops: torch.library custom ops, torch.compile and CUDA graphs.

- ``torch.library.opcheck`` on every custom op: its schema (what it mutates), its fake
  implementation, and AOTAutograd's handling of it, against running it for real.
- A small model with each loss, its forward compiled with ``fullgraph=True`` (so a graph break
  raises) and without, in ``torch._dynamo.explain`` (which counts the breaks): the same loss and
  the same gradients of every parameter as eager, for an upstream gradient of 1 and another.
- On a GPU: forward and backward of each loss captured in one CUDA graph and replayed on new
  inputs, against eager. There is no host synchronisation in either pass, so they capture.

On a CPU the kernels run in Triton's interpreter inside the compiled graph (the ops are opaque to
torch.compile, which places them without compiling them).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from lossbench import kernels
from lossbench.kernels import _common
from lossbench.kernels import linear as fused_linear
from lossbench.kernels import sigmoid as fused_sigmoid
from lossbench.kernels import softmax as fused_softmax
from lossbench.kernels._common import KERNEL_DEVICE
from lossbench.reference.tolerance import assert_close

DEVICE = KERNEL_DEVICE
# A batch of 6 (not a power of two) of 5 features into 7 classes: small enough for the
# interpreter, enough rows for an ignored one and a padding row in a program.
BATCH, FEATURES, CLASSES = 6, 5, 7


# --- opcheck: every custom op -------------------------------------------------------------------


def _softmax_op_cases() -> dict[str, tuple[Callable, tuple]]:
    logits = torch.randn(BATCH, CLASSES, 1, device=DEVICE)
    target = torch.randint(0, CLASSES, (BATCH, 1), device=DEVICE)
    target[0] = -100
    weight = torch.rand(CLASSES, device=DEVICE)
    inverse_denominators = torch.rand(2, device=DEVICE) + 0.1
    probabilities = torch.rand(BATCH, CLASSES, 1, device=DEVICE).softmax(1)
    options = (False, -100, "mean", 0.1, 0.01, 0.0, 1.0)  # CE with smoothing and z-loss
    focal_options = (True, -100, "sum", 0.0, 0.0, 2.0, 0.25)
    upstream = torch.full((1,), 1.5, device=DEVICE).expand(BATCH)
    stats = torch.empty(BATCH, 2, device=DEVICE)
    probability_stats = torch.empty(BATCH, 3, device=DEVICE)

    def like(tensor: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(tensor)

    return {
        "softmax_loss_forward": (
            fused_softmax._softmax_loss_forward,
            (
                logits,
                target,
                weight,
                inverse_denominators,
                like(target[:, 0].float()),
                like(logits),
                stats,
                *options,
            ),
        ),
        "softmax_loss_forward focal": (
            fused_softmax._softmax_loss_forward,
            (
                logits,
                target,
                weight,
                None,
                like(target[:, 0].float()),
                like(logits),
                None,
                *focal_options,
            ),
        ),
        "softmax_loss_backward": (
            fused_softmax._softmax_loss_backward,
            (
                logits,
                target,
                weight,
                inverse_denominators,
                None,
                upstream,
                like(logits),
                *options,
                False,
            ),
        ),
        "softmax_probability_loss_forward": (
            fused_softmax._softmax_probability_loss_forward,
            (
                logits,
                probabilities,
                weight,
                like(target[:, 0].float()),
                like(logits),
                like(probabilities),
                probability_stats,
                0.1,
                "mean",
            ),
        ),
        "softmax_probability_loss_backward": (
            fused_softmax._softmax_probability_loss_backward,
            (
                logits,
                probabilities,
                None,
                None,
                upstream,
                like(logits),
                like(probabilities),
                0.0,
                "sum",
                False,
            ),
        ),
    }


def _sigmoid_op_cases() -> dict[str, tuple[Callable, tuple]]:
    input = torch.randn(BATCH, CLASSES, device=DEVICE)
    target = torch.rand(BATCH, CLASSES, device=DEVICE)
    weight = torch.rand(CLASSES, device=DEVICE)
    upstream = torch.full((1,), 0.5, device=DEVICE)
    layouts = (1, CLASSES, True, 1, 1, False)  # weight (C,) read by index, no pos_weight
    return {
        "sigmoid_loss forward": (
            fused_sigmoid._sigmoid_loss_op,
            (
                input,
                target,
                weight,
                None,
                None,
                torch.empty(1, device=DEVICE),
                torch.empty_like(input),
                torch.empty_like(target),
                *layouts,
                "mean",
                False,
                -1.0,
                0.0,
                False,
            ),
        ),
        "sigmoid_loss backward": (
            fused_sigmoid._sigmoid_loss_op,
            (
                input,
                target,
                None,
                None,
                upstream,
                None,
                torch.empty_like(input),
                None,
                1,
                1,
                False,
                1,
                1,
                False,
                "sum",
                True,
                0.25,
                1.5,
                False,
            ),
        ),
        "scale_unless_one_": (
            _common._scale_unless_one_op,
            (torch.randn(BATCH, CLASSES, device=DEVICE), torch.tensor(3.0, device=DEVICE)),
        ),
    }


def _linear_op_cases() -> dict[str, tuple[Callable, tuple]]:
    x = torch.randn(BATCH, FEATURES, device=DEVICE)
    linear_weight = torch.randn(CLASSES, FEATURES, device=DEVICE)
    bias = torch.randn(CLASSES, device=DEVICE)
    target = torch.randint(0, CLASSES, (BATCH,), device=DEVICE)
    target[0] = -100
    weight = torch.rand(CLASSES, device=DEVICE)
    inverse_denominators = torch.rand(2, device=DEVICE) + 0.1
    row_stats = torch.empty(fused_linear._ROW_FIELDS, BATCH, device=DEVICE)
    # ignore_index, reduction, smoothing, z-loss, softcap, filter_eps, dot and gradient precision
    options = (-100, "mean", 0.1, 0.01, 30.0, None, "ieee", "fp32")
    forward = (x, linear_weight, bias, target, weight, inverse_denominators)
    upstream = torch.full((1,), 1.5, device=DEVICE)
    return {
        "linear_cross_entropy_forward": (
            fused_linear._linear_forward_op,
            (*forward, torch.empty(BATCH, device=DEVICE), row_stats, *options),
        ),
        "linear_cross_entropy_backward": (
            fused_linear._linear_backward_op,
            (
                x,
                linear_weight,
                bias,
                target,
                weight,
                torch.rand(fused_linear._ROW_FIELDS, BATCH, device=DEVICE),
                upstream,
                torch.empty_like(x),
                torch.empty_like(linear_weight),
                torch.empty_like(bias),
                *options,
            ),
        ),
    }


OP_CASES = {**_softmax_op_cases(), **_sigmoid_op_cases(), **_linear_op_cases()}


@pytest.mark.parametrize("case", list(OP_CASES))
def test_opcheck(case: str) -> None:
    op, args = OP_CASES[case]
    results = torch.library.opcheck(op, args)
    assert set(results.values()) == {"SUCCESS"}, results


# --- torch.compile: one graph, eager's numbers -------------------------------------------------


def _index_target() -> torch.Tensor:
    target = torch.randint(0, CLASSES, (BATCH,), device=DEVICE)
    target[1] = -100
    return target


def _probabilities() -> torch.Tensor:
    return torch.rand(BATCH, CLASSES, device=DEVICE).softmax(1).requires_grad_()


def _multi_label() -> torch.Tensor:
    return (torch.rand(BATCH, CLASSES, device=DEVICE) > 0.5).float()


# name: (the loss of logits and a target, a fresh target). Each is reduced to a scalar inside the
# compiled function, under an upstream gradient of 0.5 where the loss is 'none' or scaled.
LOSSES: dict[str, tuple[Callable, Callable[[], torch.Tensor]]] = {
    "cross_entropy mean": (
        lambda x, t: kernels.cross_entropy(x, t, label_smoothing=0.1, z_loss_scale=1e-3),
        _index_target,
    ),
    "cross_entropy none, summed": (
        lambda x, t: 0.5 * kernels.cross_entropy(x, t, reduction="none").sum(),
        _index_target,
    ),
    "cross_entropy inplace_backward, scaled": (
        lambda x, t: 0.5 * kernels.cross_entropy(x, t, inplace_backward=True),
        _index_target,
    ),
    "softmax_focal_loss sum": (
        lambda x, t: kernels.softmax_focal_loss(x, t, 0.25, 2.0, reduction="sum"),
        _index_target,
    ),
    "cross_entropy of probabilities, mean": (kernels.cross_entropy, _probabilities),
    "binary_cross_entropy_with_logits mean, scaled": (
        lambda x, t: 0.5 * kernels.binary_cross_entropy_with_logits(x, t),
        _multi_label,
    ),
    "sigmoid_focal_loss none, summed": (
        lambda x, t: kernels.sigmoid_focal_loss(x, t).sum(),
        _multi_label,
    ),
}


def _forward(loss: Callable) -> Callable:
    def forward(model: torch.nn.Module, features: torch.Tensor, target: torch.Tensor):
        return loss(model(features), target)

    return forward


def _loss_and_gradients(forward: Callable, model: torch.nn.Module, features, target):
    """The loss and the gradients of every parameter (and of a target that requires grad)."""
    model.zero_grad(set_to_none=True)
    target = target.detach().requires_grad_(target.requires_grad)
    loss = forward(model, features, target)
    loss.backward()
    gradients = [parameter.grad for parameter in model.parameters()]
    if target.requires_grad:
        gradients.append(target.grad)
    return loss.detach(), gradients


@pytest.mark.parametrize("case", list(LOSSES))
def test_compiled_fullgraph_matches_eager_without_a_graph_break(case: str) -> None:
    loss, make_target = LOSSES[case]
    model = torch.nn.Linear(FEATURES, CLASSES).to(DEVICE)
    features = torch.randn(BATCH, FEATURES, device=DEVICE)
    target = make_target()
    forward = _forward(loss)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(forward)(model, features, target)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    # aot_eager: dynamo's graph through AOTAutograd (functionalisation of the ops' mutations,
    # the joint forward and backward graph), run without inductor's code generation, which
    # would cost seconds per case on a CPU; one case below runs inductor end to end.
    compiled = torch.compile(forward, fullgraph=True, backend="aot_eager")
    expected, expected_gradients = _loss_and_gradients(forward, model, features, target)
    actual, actual_gradients = _loss_and_gradients(compiled, model, features, target)
    assert_close(actual, expected.double(), torch.float32, f"{case}: compiled loss")
    for index, (a, e) in enumerate(zip(actual_gradients, expected_gradients, strict=True)):
        assert_close(a, e.double(), torch.float32, f"{case}: compiled gradient {index}")


def test_linear_cross_entropy_compiled_fullgraph_matches_eager_without_a_graph_break() -> None:
    # The classifier's weight and bias go into the loss, never through an N x V product.
    model = torch.nn.Linear(FEATURES, CLASSES).to(DEVICE)
    features = torch.randn(BATCH, FEATURES, device=DEVICE)
    target = _index_target()

    def forward(model: torch.nn.Module, features: torch.Tensor, target: torch.Tensor):
        loss = kernels.linear_cross_entropy(
            features, model.weight, target, linear_bias=model.bias, label_smoothing=0.1
        )
        return 0.5 * loss

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(forward)(model, features, target)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(forward, fullgraph=True, backend="aot_eager")
    expected, expected_gradients = _loss_and_gradients(forward, model, features, target)
    actual, actual_gradients = _loss_and_gradients(compiled, model, features, target)
    assert_close(actual, expected.double(), torch.float32, "compiled linear loss")
    for index, (a, e) in enumerate(zip(actual_gradients, expected_gradients, strict=True)):
        assert_close(a, e.double(), torch.float32, f"compiled linear gradient {index}")


def test_inductor_end_to_end() -> None:
    # The default backend: inductor compiles the graph around the opaque ops and re-inplaces
    # their functionalised mutations into the buffers it allocates.
    loss, make_target = LOSSES["cross_entropy mean"]
    model = torch.nn.Linear(FEATURES, CLASSES).to(DEVICE)
    features = torch.randn(BATCH, FEATURES, device=DEVICE)
    target = make_target()
    forward = _forward(loss)
    torch._dynamo.reset()
    compiled = torch.compile(forward, fullgraph=True)
    expected, expected_gradients = _loss_and_gradients(forward, model, features, target)
    actual, actual_gradients = _loss_and_gradients(compiled, model, features, target)
    assert_close(actual, expected.double(), torch.float32, "compiled loss")
    for a, e in zip(actual_gradients, expected_gradients, strict=True):
        assert_close(a, e.double(), torch.float32, "compiled gradient")


# --- CUDA graphs (GPU) ------------------------------------------------------------------------


def _cuda_graph_inputs(case: str) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(64, 1000, device=DEVICE, dtype=torch.bfloat16)
    if "sigmoid" in case or "binary" in case:
        target = (torch.rand(64, 1000, device=DEVICE) > 0.5).to(torch.bfloat16)
    elif "probabilities" in case:
        target = torch.rand(64, 1000, device=DEVICE).softmax(1).to(torch.bfloat16)
    else:
        target = torch.randint(0, 1000, (64,), device=DEVICE)
    return logits, target


@pytest.mark.gpu
@pytest.mark.parametrize("case", [name for name in LOSSES if "inplace" not in name])
def test_forward_and_backward_capture_in_a_cuda_graph(case: str) -> None:
    # torch's recipe (torch.cuda.graphs): warm up on a side stream (Triton's compilation, the
    # allocator), capture loss and backward into the gradient of static inputs, then copy new
    # inputs in and replay; each replay must give eager's loss and gradient for those inputs.
    loss_function, _ = LOSSES[case]
    static_logits, static_target = _cuda_graph_inputs(case)
    static_logits.requires_grad_()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            static_logits.grad = None
            loss_function(static_logits, static_target).backward()
    torch.cuda.current_stream().wait_stream(side)
    static_logits.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = loss_function(static_logits, static_target)
        static_loss.backward()
    for _ in range(2):
        logits, target = _cuda_graph_inputs(case)
        with torch.no_grad():
            static_logits.copy_(logits)
            static_target.copy_(target)
        graph.replay()
        eager_logits = logits.detach().clone().requires_grad_()
        expected = loss_function(eager_logits, target)
        expected.backward()
        torch.cuda.synchronize()
        assert_close(static_loss, expected.double(), torch.bfloat16, f"{case}: replayed loss")
        assert_close(
            static_logits.grad, eager_logits.grad.double(), torch.bfloat16, f"{case}: gradient"
        )


@pytest.mark.gpu
def test_linear_cross_entropy_captures_in_a_cuda_graph() -> None:
    # The same recipe for the linear loss: hidden states, classifier and bias are the static
    # inputs; their gradients come out of the replay.
    def inputs() -> tuple[torch.Tensor, ...]:
        hidden = torch.randn(256, 128, device=DEVICE, dtype=torch.bfloat16)
        classifier = (torch.randn(1000, 128, device=DEVICE) / 128**0.5).to(torch.bfloat16)
        bias = torch.randn(1000, device=DEVICE, dtype=torch.bfloat16)
        return hidden, classifier, bias, torch.randint(0, 1000, (256,), device=DEVICE)

    def loss_function(hidden, classifier, bias, target) -> torch.Tensor:
        return kernels.linear_cross_entropy(hidden, classifier, target, linear_bias=bias)

    *static, static_target = inputs()
    for tensor in static:
        tensor.requires_grad_()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            for tensor in static:
                tensor.grad = None
            loss_function(*static, static_target).backward()
    torch.cuda.current_stream().wait_stream(side)
    for tensor in static:
        tensor.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = loss_function(*static, static_target)
        static_loss.backward()
    for _ in range(2):
        *fresh, target = inputs()
        with torch.no_grad():
            for tensor, value in zip(static, fresh, strict=True):
                tensor.copy_(value)
            static_target.copy_(target)
        graph.replay()
        eager = [value.detach().clone().requires_grad_() for value in fresh]
        expected = loss_function(*eager, target)
        expected.backward()
        torch.cuda.synchronize()
        assert_close(static_loss, expected.double(), torch.bfloat16, "replayed linear loss")
        for name, tensor, reference in zip(("input", "weight", "bias"), static, eager, strict=True):
            assert_close(tensor.grad, reference.grad.double(), torch.bfloat16, f"replayed d {name}")
