"""The harness's vocabulary (lossbench.bench.cases, .implementations, .selection): the bytes a
case moves and its flops, presets, case generation, inputs, why an implementation cannot run,
option lists."""

from __future__ import annotations

import pytest
import torch

from lossbench.bench.cases import (
    LOSSES,
    PEER_SHAPES,
    PRESETS,
    Case,
    bytes_moved,
    generate_cases,
    make_inputs,
    model_flops,
)
from lossbench.bench.implementations import UnavailableError, load_implementation
from lossbench.bench.selection import SelectionError, flatten_names, parse_names, parse_sizes

# --- Byte formulas ----------------------------------------------------------------------------


def test_bytes_of_cross_entropy_by_hand() -> None:
    # 8 x 10 fp32: logits 8*10*4 = 320 B, int64 targets 8*8 = 64 B, the scalar loss 4 B.
    assert bytes_moved("cross_entropy", 8, 10, "fp32", "forward") == 320 + 64 + 4
    # Backward adds the gradient (320 B) and reads the scalar upstream gradient (4 B).
    assert bytes_moved("cross_entropy", 8, 10, "fp32", "forward_backward") == 388 + 320 + 4


def test_bytes_of_sigmoid_losses_by_hand() -> None:
    # 4 x 3 bf16: logits 24 B, targets in the logits' dtype 24 B, loss 2 B; gradient 24 B + 2 B.
    for loss in ("binary_cross_entropy_with_logits", "sigmoid_focal_loss"):
        assert bytes_moved(loss, 4, 3, "bf16", "forward") == 50
        assert bytes_moved(loss, 4, 3, "bf16", "forward_backward") == 76
    # The peer table's 8192 x 16384 bf16 BCE: 2 x 256 MiB in, 256 MiB gradient out.
    big = bytes_moved("binary_cross_entropy_with_logits", 8192, 16384, "bf16", "forward_backward")
    assert big == 3 * 8192 * 16384 * 2 + 2 * 2


def test_flops_of_the_linear_loss_by_hand() -> None:
    # CCE's Table 1 shape: logits 2 N D V = 9.66e12 flops; with d input and d W, three times it.
    assert model_flops(8192, 2304, 256000, "forward") == 2 * 8192 * 2304 * 256000
    assert model_flops(8192, 2304, 256000, "forward_backward") == 6 * 8192 * 2304 * 256000


# --- Cases and presets ------------------------------------------------------------------------


def test_cases_put_peer_shapes_first_and_cover_every_combination() -> None:
    cases = generate_cases(PRESETS["full"], tuple(LOSSES), ("torch", "triton"), ("bf16",))
    assert len({case.id for case in cases}) == len(cases)
    first = cases[0]
    assert first.shape in PEER_SHAPES[first.spec.family]
    softmax_shapes = len(PRESETS["full"].shapes["softmax"])
    ce_cases = [case for case in cases if case.loss == "cross_entropy"]
    assert len(ce_cases) == softmax_shapes * 2 * 2  # shapes x passes x impls
    linear = [case for case in cases if case.loss == "linear_cross_entropy"]
    assert {case.shape for case in linear} >= set(PEER_SHAPES["linear"])
    assert (8192, 2304, 256000) in {case.shape for case in linear}  # CCE's Table 1


def test_linear_implementations_run_for_the_linear_loss_only() -> None:
    impls = ("torch", "torch-chunked", "cce", "cce-filter", "triton")
    cases = generate_cases(PRESETS["tiny"], tuple(LOSSES), impls, ("fp32",))
    by_loss = {}
    for case in cases:
        by_loss.setdefault(case.loss, set()).add(case.impl)
    assert by_loss["linear_cross_entropy"] == set(impls)
    assert by_loss["cross_entropy"] == {"torch", "triton"}
    linear = next(case for case in cases if case.loss == "linear_cross_entropy")
    assert linear.id == "linear_cross_entropy-torch-fp32-16x8x40-forward"
    assert linear.shape == (16, 8, 40) and linear.hidden == 8


def test_size_options_replace_the_preset_grid() -> None:
    quick = PRESETS["quick"]
    cases = generate_cases(quick, ("cross_entropy",), ("torch",), ("fp32",), (3, 5), (7,))
    assert {(case.batch, case.classes) for case in cases} == {(3, 7), (5, 7)}
    # Hidden sizes apply to the linear loss alone; its classes and batches come with the grid.
    losses = ("cross_entropy", "linear_cross_entropy")
    cases = generate_cases(quick, losses, ("torch",), ("fp32",), (3,), (7,), (16, 48))
    assert {case.shape for case in cases} == {(3, 7), (3, 16, 7), (3, 48, 7)}


def test_inputs_are_random_and_shaped_per_family() -> None:
    case = Case("sigmoid_focal_loss", "torch", "bf16", 6, 5, "forward_backward")
    (logits,), target = make_inputs(case, torch.device("cpu"))
    assert logits.shape == target.shape == (6, 5) and logits.dtype == torch.bfloat16
    assert logits.requires_grad and logits.std() > 0.5 and set(target.unique().tolist()) <= {0, 1}
    case = Case("cross_entropy", "torch", "fp32", 6, 5, "forward")
    (logits,), target = make_inputs(case, torch.device("cpu"), batch=2)
    assert logits.shape == (2, 5) and target.shape == (2,) and not logits.requires_grad


def test_inputs_repeat_for_every_implementation_and_pass_of_a_shape() -> None:
    cpu = torch.device("cpu")
    for loss in ("cross_entropy", "binary_cross_entropy_with_logits"):
        case = Case(loss, "torch", "bf16", 6, 5, "forward_backward")
        (logits,), target = make_inputs(case, cpu)
        for same in (case, Case(loss, "triton", "bf16", 6, 5, "forward")):
            (again,), again_target = make_inputs(same, cpu)
            assert torch.equal(again, logits) and torch.equal(again_target, target)
        (other,), _ = make_inputs(Case(loss, "torch", "bf16", 6, 7, "forward"), cpu)
        assert not torch.equal(other[:, :5], logits)
    case = Case("linear_cross_entropy", "torch", "fp32", 4, 9, "forward", 8)
    first, second = make_inputs(case, cpu)[0], make_inputs(case, cpu)[0]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_linear_inputs_give_standard_normal_logits() -> None:
    case = Case("linear_cross_entropy", "torch", "bf16", 256, 300, "forward_backward", 64)
    (hidden, linear_weight), target = make_inputs(case, torch.device("cpu"))
    assert hidden.shape == (256, 64) and linear_weight.shape == (300, 64)
    assert hidden.dtype == linear_weight.dtype == torch.bfloat16
    assert hidden.requires_grad and linear_weight.requires_grad
    assert target.shape == (256,) and target.min() >= 0 and target.max() < 300
    logits = hidden.float() @ linear_weight.float().t()
    assert 0.8 < logits.std() < 1.2


# --- Skips with a reason ----------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the reason given without a GPU")
def test_liger_without_gpu_is_unavailable_with_a_reason() -> None:
    with pytest.raises(UnavailableError, match="needs a CUDA GPU"):
        load_implementation("cross_entropy", "liger")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the reason given without a GPU")
@pytest.mark.parametrize("impl", ["liger", "cce", "cce-filter"])
def test_linear_peers_without_gpu_are_unavailable_with_a_reason(impl: str) -> None:
    with pytest.raises(UnavailableError, match="need"):
        load_implementation("linear_cross_entropy", impl)


def test_linear_only_peers_say_so_for_other_losses() -> None:
    with pytest.raises(UnavailableError, match="linear cross-entropy only"):
        load_implementation("cross_entropy", "torch-chunked")


def test_torch_chunked_needs_torch_2_14(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.nn import functional

    monkeypatch.delattr(functional, "linear_cross_entropy", raising=False)
    with pytest.raises(UnavailableError, match=r"no F\.linear_cross_entropy"):
        load_implementation("linear_cross_entropy", "torch-chunked")


def test_liger_has_no_focal_loss_and_says_so() -> None:
    with pytest.raises(UnavailableError, match="Liger-Kernel has no softmax_focal_loss"):
        load_implementation("softmax_focal_loss", "liger")


def test_missing_module_is_unavailable_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    def missing(name: str):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(UnavailableError, match=r"kernels\.softmax cannot be imported"):
        load_implementation("cross_entropy", "triton")


# --- Option lists -----------------------------------------------------------------------------


def test_name_lists_keep_order_drop_repeats_and_refuse_unknown_names() -> None:
    assert parse_names(" torch, triton,torch ", ("torch", "triton", "liger"), "impl") == (
        "torch",
        "triton",
    )
    with pytest.raises(SelectionError, match=r"unknown impl \['jax'\]; known: torch, triton"):
        parse_names("torch,jax", ("torch", "triton"), "impl")
    with pytest.raises(SelectionError, match="unknown impl"):
        parse_names(",", ("torch",), "impl")


def test_size_lists_are_positive_integers() -> None:
    assert parse_sizes("8, 64", "batch sizes") == (8, 64)
    for bad in ("8,x", "0,8", ""):
        with pytest.raises(SelectionError, match="batch sizes"):
            parse_sizes(bad, "batch sizes")


def test_repeated_name_options_flatten_in_order() -> None:
    known = ("torch", "reference", "triton")
    assert flatten_names(None, known) == known
    given = [("triton",), ("torch", "reference"), ("triton",)]
    assert flatten_names(given, known) == ("triton", "torch", "reference")
