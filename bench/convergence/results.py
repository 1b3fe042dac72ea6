"""What a convergence run writes: convergence.csv, convergence.png and a terminal summary.

The CSV is long-format, one row per step loss or epoch metric, with the harness's provenance and
the data set's name; results/README.md documents it. Without a GPU, triton's seconds are the
interpreter's, and every triton row says so in its ``note``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import torch

from lossbench.bench.convergence.data import TASKS, DigitData
from lossbench.bench.convergence.train import TrainingConfig, TrainingRun, weight_difference
from lossbench.bench.provenance import PROVENANCE_COLUMNS, provenance
from lossbench.bench.results import load_csv, write_atomically, write_csv
from lossbench.reference.tolerance import relative_error, tolerance

CONVERGENCE_CSV = "convergence.csv"
CONVERGENCE_PNG = "convergence.png"

# The CSV's columns, in order: the harness's provenance, then what was trained.
# ``metric`` is one of METRICS; ``step`` (1-based over the whole run) is empty for per-epoch
# metrics.
COLUMNS = (
    *PROVENANCE_COLUMNS,
    "dataset",
    "image_size",
    "dtype",
    "cpu_threads",
    "task",
    "loss",
    "impl",
    "seed",
    "batch_size",
    "learning_rate",
    "epoch",
    "step",
    "metric",
    "value",
    "unit",
    "note",
)
# Each metric with its unit and what it counts.
METRICS: dict[str, tuple[str, str]] = {
    "train_loss": ("loss", "batch-mean training loss of one step"),
    "epoch_mean_train_loss": ("loss", "training loss of the epoch, averaged over its images"),
    "test_zero_one_loss": ("fraction", "0-1 loss on the test set after the epoch (error rate)"),
    "epoch_seconds": ("s", "seconds of the epoch's training steps, device synchronised"),
}


INTERPRETER_NOTE = "Triton's interpreter (no GPU): its seconds are not kernel speed"


def results_rows(
    runs: Sequence[TrainingRun], data: DigitData, config: TrainingConfig, device: torch.device
) -> list[dict[str, object]]:
    """The long-format rows of ``runs``: one per step loss and one per epoch metric."""
    height, width = data.image_size
    common = provenance(device) | {
        "dataset": data.name,
        "image_size": f"{height}x{width}",
        "dtype": "float32",
        "cpu_threads": torch.get_num_threads() if device.type == "cpu" else "",
        "seed": config.seed,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
    }
    rows: list[dict[str, object]] = []

    def add(run: TrainingRun, epoch: int, step: int | str, metric: str, value: float) -> None:
        rows.append(
            common
            | {"task": run.task, "loss": run.loss, "impl": run.implementation}
            | {"epoch": epoch, "step": step, "metric": metric}
            # 9 significant digits: the step losses (float32) exactly, the rest closely enough.
            | {"value": f"{value:.9g}", "unit": METRICS[metric][0]}
            | {"note": INTERPRETER_NOTE if run.interpreted else ""}
        )

    for run in runs:
        for step, (epoch, value) in enumerate(
            zip(run.step_epochs, run.step_losses, strict=True), start=1
        ):
            add(run, epoch, step, "train_loss", value)
        for record in run.epochs:
            add(run, record.epoch, "", "epoch_mean_train_loss", record.mean_train_loss)
            add(run, record.epoch, "", "test_zero_one_loss", record.test_zero_one_loss)
            add(run, record.epoch, "", "epoch_seconds", record.seconds)
    return rows


def fuller_run_on_disk(
    csv_path: Path,
    dataset: str,
    epochs: int,
    steps_per_epoch: int,
    runs: set[tuple[str, str, str]],
) -> str | None:
    """What of the convergence CSV at ``csv_path`` a new run would lose, or None.

    The new run trains ``runs`` ((task, loss, impl) triples) on ``dataset`` for ``epochs`` of
    ``steps_per_epoch`` steps. It would lose something when the file holds another data set,
    more epochs, longer epochs, or a (task, loss, impl) the new run does not train: a quick run
    must not silently replace a fuller one.
    """
    if not csv_path.exists():
        return None
    frame = load_convergence(csv_path)
    steps = frame[frame["metric"] == "train_loss"]
    on_disk_epochs = int(frame["epoch"].max())
    on_disk_steps = len(steps) // max(1, steps.groupby(["task", "loss", "impl"]).ngroups)
    on_disk_runs = set(zip(frame["task"], frame["loss"], frame["impl"], strict=True))
    datasets = set(frame["dataset"])
    lost = []
    if datasets != {dataset}:
        lost.append(f"data set {', '.join(sorted(datasets))}")
    if on_disk_epochs > epochs or on_disk_steps > epochs * steps_per_epoch:
        lost.append(f"{on_disk_epochs} epochs, {on_disk_steps} steps per run")
    if on_disk_runs - runs:
        lost.append(f"{len(on_disk_runs - runs)} (task, loss, impl) runs this one does not train")
    return "; ".join(lost) or None


def write_convergence(rows: Sequence[dict[str, object]], path: Path) -> None:
    """Write ``rows`` to ``path`` with the columns ``COLUMNS``, atomically."""
    write_csv(path, COLUMNS, rows)


# How each implementation is drawn: the curves should lie on top of each other, so the styles
# differ enough for the overlap itself to show.
_STYLES = {
    "torch": {"color": "tab:blue", "linestyle": "-", "linewidth": 2.0, "marker": "o"},
    "reference": {"color": "tab:orange", "linestyle": "--", "linewidth": 1.2, "marker": "s"},
    "triton": {"color": "tab:green", "linestyle": ":", "linewidth": 1.2, "marker": "x"},
}


def load_convergence(csv_path: Path):
    """A convergence CSV as a pandas DataFrame (``lossbench.bench.results.load_csv``)."""
    return load_csv(csv_path, COLUMNS)


def plot_convergence(csv_path: Path, png_path: Path) -> None:
    """Plot a convergence CSV: one row of panels per (task, loss), written atomically as PNG.

    Panels: the per-step training loss of each implementation overlaid; the per-step |loss -
    torch's loss| on a log scale beside the fp32 tolerance (exact agreement is stated, since zero
    has no logarithm); the test 0-1 loss per epoch. The title names the data set, device, dtype.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    frame = load_convergence(csv_path)
    pairs = list(dict.fromkeys(zip(frame["task"], frame["loss"], strict=True)))
    figure, axes = plt.subplots(len(pairs), 3, figsize=(16, 3.4 * len(pairs)), squeeze=False)
    for row, (task, loss) in enumerate(pairs):
        subset = frame[(frame["task"] == task) & (frame["loss"] == loss)]
        steps = subset[subset["metric"] == "train_loss"]
        curves = {
            name: group.set_index("step")["value"]
            for name, group in steps.groupby("impl", sort=False)
        }
        pair_title = f"{task} ({TASKS[task].description})\n{loss}"
        loss_axis, difference_axis, error_axis = axes[row]
        for name, curve in curves.items():
            style = _STYLES[name] | {"marker": None}
            loss_axis.plot(curve.index, curve.values, label=name, **style)
        loss_axis.set_yscale("log")
        loss_axis.set_title(f"{pair_title}: training loss")
        loss_axis.set_xlabel("step")
        loss_axis.set_ylabel("loss (batch mean)")
        loss_axis.legend()
        difference_axis.set_title(f"{pair_title}: |loss - torch's loss|")
        difference_axis.set_xlabel("step")
        difference_axis.set_ylabel("absolute difference")
        notes = []
        if "torch" in curves:
            allowed = tolerance(torch.float32) * curves["torch"].abs()
            for name, curve in curves.items():
                if name == "torch":
                    continue
                difference = (curve - curves["torch"]).abs()
                if (difference == 0).all():
                    notes.append(f"{name}: identical to torch at every step")
                    continue
                positive = difference[difference > 0]
                style = _STYLES[name] | {"marker": None, "linestyle": "-", "linewidth": 0.8}
                difference_axis.plot(positive.index, positive.values, label=name, **style)
            difference_axis.plot(
                allowed.index,
                allowed.values,
                color="grey",
                linestyle="--",
                linewidth=1,
                label=f"fp32 tolerance: {tolerance(torch.float32):g} x torch's loss",
            )
            difference_axis.set_yscale("log")
            difference_axis.legend(fontsize="small")
        else:
            notes.append("torch was not run")
        if notes:
            difference_axis.text(
                0.02, 0.05, "\n".join(notes), transform=difference_axis.transAxes, va="bottom"
            )
        errors = subset[subset["metric"] == "test_zero_one_loss"]
        for name, group in errors.groupby("impl", sort=False):
            error_axis.plot(group["epoch"], group["value"], label=name, **_STYLES[name])
        error_axis.set_title(f"{pair_title}: test 0-1 loss")
        error_axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs only
        error_axis.set_xlabel("epoch")
        error_axis.set_ylabel("error rate (fraction of labels)")
        error_axis.legend()
    first = frame.iloc[0]
    figure.suptitle(
        f"Digit CNN trained with each loss implementation from the same weights and batches: "
        f"{first['dataset']} ({first['image_size']}), {first['device_name']} "
        f"({first['device']}), {first['dtype']}, batch {first['batch_size']}, "
        f"Adam lr {first['learning_rate']:g}"
    )
    # Fixed margins: tight_layout measures every label and took 5 to 15 s for six rows.
    height = figure.get_figheight()
    figure.subplots_adjust(
        left=0.06, right=0.98, wspace=0.28, hspace=0.7, top=1 - 1.3 / height, bottom=0.5 / height
    )
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=90)
    plt.close(figure)
    write_atomically(png_path, image.getvalue())


def _step_loss_difference(run: TrainingRun, baseline: TrainingRun) -> float:
    return relative_error(torch.tensor(run.step_losses), torch.tensor(baseline.step_losses))


def summary_table(runs: Sequence[TrainingRun]) -> str:
    """A terminal table per run: final test error, median epoch seconds, agreement with torch."""
    import pandas as pd

    torch_runs = {(run.task, run.loss): run for run in runs if run.implementation == "torch"}
    lines = []
    for run in runs:
        baseline = torch_runs.get((run.task, run.loss))
        compared = baseline is not None and run is not baseline
        lines.append(
            {
                "task": run.task,
                "loss": run.loss,
                "impl": run.implementation + (" (interpreter)" if run.interpreted else ""),
                "final test 0-1 loss": run.epochs[-1].test_zero_one_loss,
                "median epoch s": sorted(record.seconds for record in run.epochs)[
                    len(run.epochs) // 2
                ],
                # torch's own row compares with nothing: '-', not NaN.
                "step-loss rel. diff vs torch": (
                    f"{_step_loss_difference(run, baseline):.3g}" if compared else "-"
                ),
                "weight rel. diff vs torch": (
                    f"{weight_difference(run, baseline):.3g}" if compared else "-"
                ),
            }
        )
    return pd.DataFrame(lines).to_string(index=False, float_format=lambda value: f"{value:.3g}")
