"""Compile, for an H100/H200 (sm_90) and without a GPU, exactly what a call of a fused loss
launches, and count what it launches.

Runs in a subprocess of its own (``compile_cases`` starts it): it sets TRITON_INTERPRET=0,
replaces Triton's driver with one that only answers "device 0, stream 0, target sm_90", and
makes every Triton launch compile instead of run (``JITFunction.run`` with ``warmup=True``), so
that the launchers in lossbench.kernels pick their block shapes, warps and constexprs for CPU
tensors of the case's shape exactly as they would for CUDA ones, and Triton specialises the
arguments as it would on the GPU. Nothing is computed; tensors are ``torch.empty``.

Device launches are counted while the call runs: every Triton launch, and every torch operator
that would launch device work on a GPU (anything but views and allocations), seen through a
TorchDispatchMode. Host synchronisations (``.item()``) are counted apart.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import tempfile

from lossbench.bench.static.cases import StaticCase

# torch operators that launch nothing on a GPU: allocations and metadata. Views, and operators
# that neither return nor write a tensor (aten.promote_types, say), are recognised by their
# schema; lossbench's own custom ops are containers: the launches inside them are counted.
_NO_DEVICE_WORK = {
    "empty",
    "empty_like",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "detach",
    "alias",
    "lift_fresh",
    "set_",
    "resize_",
    "_reshape_alias",
}
_HOST_SYNC = {"_local_scalar_dense", "item", "nonzero", "equal", "is_nonzero"}


class OfflineCompileError(RuntimeError):
    """The compiling subprocess failed; the message holds its error output."""


class OfflineCompileUnavailableError(RuntimeError):
    """This Triton cannot compile for sm_90 here (no NVIDIA backend or no ptxas); says which."""


def compile_cases(cases: list[StaticCase], timeout_s: float = 1800) -> list[dict]:
    """Compile every case in a fresh subprocess; one record per case (``_analyse_case``)."""
    # An empty Triton cache: a cached cubin compiled from the same source in another checkout
    # carries that checkout's file names in its line table, which the counts are read from.
    with tempfile.TemporaryDirectory() as cache:
        completed = subprocess.run(
            [sys.executable, "-m", "lossbench.bench.static.offline"],
            input=json.dumps([case.as_dict() for case in cases]),
            env={**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": cache},
            # Not the checkout: its folders (kernels/, bench/) must not shadow installed packages.
            cwd=tempfile.gettempdir(),
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout_s,
        )
    if completed.returncode != 0:
        raise OfflineCompileError(
            f"the sm_90 compilation subprocess failed:\n{completed.stderr[-8000:]}"
        )
    records = json.loads(completed.stdout.strip().splitlines()[-1])
    if isinstance(records, dict):
        raise OfflineCompileUnavailableError(records["skip"])
    return records


def sm90_unavailable() -> str | None:
    """Why this Triton cannot compile for sm_90 here (no NVIDIA backend, no ptxas), or None."""
    import triton
    from triton.backends import backends

    try:
        if "nvidia" not in backends:
            raise RuntimeError("this Triton has no NVIDIA backend")
        triton.knobs.nvidia.ptxas.path  # noqa: B018 (raises when no ptxas is found)
    except (AttributeError, RuntimeError) as error:
        return f"Triton {triton.__version__} cannot compile for sm_90: {error}"
    return None


def install_offline_driver() -> None:
    """Replace Triton's driver by one that answers "device 0, stream 0, target sm_90" without a
    GPU, so that its JIT compiles for an H100/H200 (in a process of its own: for good)."""
    import triton
    from triton.backends.compiler import GPUTarget

    class OfflineDriver:
        """What Triton's JIT asks of a driver before it compiles: a device, a stream, a target."""

        def get_current_device(self) -> int:
            return 0

        def get_current_stream(self, device: int) -> int:
            return 0

        def get_current_target(self) -> GPUTarget:
            return GPUTarget("cuda", 90, 32)  # H100/H200, 32 threads per warp

    triton.runtime.driver.set_active(OfflineDriver())


def let_launchers_take_cpu_tensors() -> None:
    """The kernels' device check accepts the CPU, and persistent grids see an H200's SMs."""
    import importlib
    import pkgutil

    from lossbench import kernels
    from lossbench.bench.static.hardware import MODEL
    from lossbench.kernels import _common

    _common.KERNEL_DEVICE = "cpu"
    original = _common.multiprocessor_count
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"lossbench.kernels.{info.name}")
        for name, value in list(vars(module).items()):
            if value is original:
                setattr(module, name, lambda device: MODEL.sms)


class _Recorder:
    """Every launch of a call, in order: ("triton", name, facts) or ("torch", operator)."""

    def __init__(self) -> None:
        self.launches: list[tuple] = []
        self.host_syncs: list[str] = []
        self.facts: list[dict] = []
        self.analysing = True  # False while a call only warms up: compile, analyse nothing

    def compile_instead_of_launch(self) -> None:
        from torch.utils._python_dispatch import _disable_current_modes
        from triton.runtime.jit import JITFunction

        from lossbench.bench.static.compiled import launch_facts

        run = JITFunction.run
        recorder = self

        def compile_only(kernel, *args, grid, warmup, **kwargs):
            compiled = run(kernel, *args, grid=grid, warmup=True, **kwargs)
            if warmup or not recorder.analysing:
                return compiled
            parameters = inspect.signature(kernel.fn).parameters
            bound = inspect.signature(kernel.fn).bind(
                *args, **{name: value for name, value in kwargs.items() if name in parameters}
            )
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            size = grid(arguments) if callable(grid) else grid
            programs = 1
            for extent in size:
                programs *= int(extent)
            # The analyser's own reads of the arguments (the upstream gradient's value) are not
            # the call's: out of the counting mode.
            with _disable_current_modes():
                facts = launch_facts(
                    compiled, arguments, programs, inspect.getsourcefile(kernel.fn)
                )
            recorder.launches.append(("triton", facts.kernel))
            recorder.facts.append(facts.as_dict())
            return compiled

        JITFunction.run = compile_only

    def dispatch_mode(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        recorder = self

        class CountDeviceWork(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                name = func.overloadpacket.__name__
                if func.namespace == "lossbench":
                    # Run the op's implementation with this mode on again, so that the torch
                    # operators inside it are counted too (a mode is off inside its own
                    # __torch_dispatch__).
                    implementation = _custom_op_implementation(func)
                    if implementation is not None:
                        with self:
                            return implementation(*args, **kwargs)
                elif name in _HOST_SYNC:
                    recorder.host_syncs.append(str(func))
                elif _launches_device_work(func):
                    recorder.launches.append(("torch", str(func)))
                return func(*args, **kwargs)

        return CountDeviceWork()


def _launches_device_work(func) -> bool:
    """Whether a torch operator would launch device work: it returns or writes a tensor, and is
    neither a view nor an allocation."""
    if func.is_view or func.overloadpacket.__name__ in _NO_DEVICE_WORK:
        return False
    schema = func._schema
    returns_tensor = any("Tensor" in str(value.type) for value in schema.returns)
    writes = any(
        argument.alias_info is not None and argument.alias_info.is_write
        for argument in schema.arguments
    )
    return returns_tensor or writes


def _custom_op_implementation(func):
    """The Python function behind a torch.library custom op, or None when torch hides it."""
    from torch._library.custom_ops import OPDEFS

    definition = OPDEFS.get(f"{func.namespace}::{func._schema.name.split('::')[-1]}")
    return getattr(definition, "_init_fn", None)


def _describe(error: BaseException) -> str:
    """An exception and its causes, one line each (a Triton CompilationError's cause says why)."""
    lines = []
    while error is not None:
        text = str(error).strip().splitlines()
        lines.append(f"{type(error).__name__}: {text[-1] if text else ''}"[:500])
        error = error.__cause__
    return " <- ".join(lines)


def _analyse_case(case: StaticCase, recorder: _Recorder) -> dict:
    from lossbench.bench.static.cases import prepare_call

    try:
        call = prepare_call(case)
        # Once to compile and to make what a first call makes once per process (the kernels'
        # workspace), then once counted: the launches of every later call.
        recorder.analysing = False
        call()
        recorder.analysing = True
        recorder.launches.clear()
        recorder.host_syncs.clear()
        recorder.facts.clear()
        with recorder.dispatch_mode():
            call()
    except Exception as error:
        return {"case": case.as_dict(), "error": _describe(error)}
    return {
        "case": case.as_dict(),
        "launches": [" ".join(launch) for launch in recorder.launches],
        "host_syncs": list(recorder.host_syncs),
        "kernels": list(recorder.facts),
    }


def main() -> None:
    """The subprocess: read cases (JSON on stdin), print one JSON line of records."""
    if os.environ.get("TRITON_INTERPRET") != "0":
        raise SystemExit("run through compile_cases: TRITON_INTERPRET must be 0")
    cases = [StaticCase.from_dict(data) for data in json.loads(sys.stdin.read())]
    if reason := sm90_unavailable():
        print(json.dumps({"skip": reason}))
        return
    install_offline_driver()
    let_launchers_take_cpu_tensors()
    recorder = _Recorder()
    recorder.compile_instead_of_launch()
    records = [_analyse_case(case, recorder) for case in cases]
    print(json.dumps(records))


if __name__ == "__main__":
    main()
