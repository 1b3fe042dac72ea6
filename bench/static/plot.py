"""The static table as a picture: SASS instructions per element against the budget, and the
ESTIMATED fraction of the copy bandwidth, per case."""

from __future__ import annotations

import io
from pathlib import Path

from lossbench.bench.results import write_atomically
from lossbench.bench.static.hardware import MODEL

_SHORT = {
    "cross_entropy": "CE",
    "softmax_focal_loss": "softmax focal",
    "binary_cross_entropy_with_logits": "BCE",
    "sigmoid_focal_loss": "sigmoid focal",
}


def _label(row: dict[str, object]) -> str:
    target = "" if row["target"] == "index" else f" +{row['target']}"
    return f"{_SHORT[row['loss']]} {row['dtype']}{target} {row['batch']}x{row['classes']}"


def plot_static(rows: list[dict[str, object]], path: Path) -> None:
    """Two panels over the cases: instructions per element with the budget, and the estimated
    fraction of the copy bandwidth. Written atomically to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [_label(row) for row in rows]
    positions = range(len(rows))
    figure, (instructions, fraction) = plt.subplots(
        1, 2, figsize=(14, max(4.0, 0.32 * len(rows) + 1.5)), sharey=True, layout="constrained"
    )
    instructions.barh(positions, [row["sass_per_element"] for row in rows], color="tab:blue")
    instructions.scatter(
        [row["budget_sass_per_element"] for row in rows],
        positions,
        marker="|",
        s=200,
        color="black",
        label="budget",
        zorder=3,
    )
    instructions.set_xlabel("SASS instructions per element (per thread, fwd+bwd; compiler fact)")
    instructions.set_yticks(list(positions), labels, fontsize=8)
    instructions.invert_yaxis()
    instructions.legend(loc="lower right")
    fraction.barh(positions, [row["est_copy_fraction"] for row in rows], color="tab:orange")
    fraction.set_xlim(0, 1)
    fraction.set_xlabel(
        f"ESTIMATED fraction of the copy bandwidth ({MODEL.copy_bandwidth / 1e12:.1f} TB/s "
        "assumed; not measured)"
    )
    figure.suptitle(
        f"Fused kernels compiled offline for sm_90: forward+backward, 'mean'. "
        f"ESTIMATES for an {MODEL.device} from a model, not measured"
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    write_atomically(path, buffer.getvalue())
