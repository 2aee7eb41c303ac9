"""What a trial leaves next to its metrics: the router matrix and the target gates.

``router_matrix.csv`` (tasks x candidates, header = candidate names, index =
task names) and ``router_heatmap.png`` show where each task routes (finding F17
reads the asymmetry off them); ``target_gates.csv`` holds each task's share g of
its own target prompt (empty of values without ``add_target``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from routed_study.trainables.results import GATES_CSV, ROUTER_CSV, ROUTER_PNG


@dataclass(frozen=True)
class RoutingSnapshot:
    """The router's state at one moment, detached from torch."""

    task_names: tuple[str, ...]
    candidate_names: tuple[str, ...]
    router_matrix: np.ndarray            # T x C logits
    target_gates: np.ndarray | None      # T shares, None without add_target

    @classmethod
    def of(cls, model, task_names: Sequence[str]) -> "RoutingSnapshot":
        """Snapshot a :class:`~trainables.routed_prompt.RoutedPrompt`."""
        return cls(tuple(task_names), tuple(model.candidate_names), model.router_matrix(), model.target_gates())

    def router_frame(self):
        import pandas as pd

        return pd.DataFrame(self.router_matrix, index=pd.Index(self.task_names, name="task"),
                            columns=list(self.candidate_names))

    def gates_frame(self):
        import pandas as pd

        gates = self.target_gates if self.target_gates is not None else np.full(len(self.task_names), np.nan)
        return pd.DataFrame({"target_gate": gates}, index=pd.Index(self.task_names, name="task"))

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write the three artifacts into ``out_dir``; returns their paths by name."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"router_matrix": out / ROUTER_CSV, "router_heatmap": out / ROUTER_PNG,
                 "target_gates": out / GATES_CSV}
        self.router_frame().to_csv(paths["router_matrix"])
        self.gates_frame().to_csv(paths["target_gates"])
        plot_router_heatmap(self.router_frame(), paths["router_heatmap"])
        return paths


def plot_router_heatmap(frame, path: str | Path) -> None:
    """A tasks x candidates heatmap of router logits, annotated with the values."""
    import matplotlib

    matplotlib.use("Agg")  # trials run headless
    import matplotlib.pyplot as plt

    rows, cols = frame.shape
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * cols, 1.0 + 0.5 * rows))
    try:
        bound = max(float(np.abs(frame.to_numpy()).max()), 1e-6)
        image = ax.imshow(frame.to_numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
        ax.set_xticks(range(cols), frame.columns, rotation=45, ha="right")
        ax.set_yticks(range(rows), frame.index)
        for (i, j), value in np.ndenumerate(frame.to_numpy()):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xlabel("candidate")
        ax.set_ylabel("task")
        ax.set_title("router logits")
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
