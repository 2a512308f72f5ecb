"""The training curves of ``jconv train`` (matplotlib, from the demo extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def plot_curves(path: Path, metrics: dict[str, Any]) -> None:
    """Loss per step (and per epoch) and accuracy per epoch, as a PNG (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is part of the demo extra
        return
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    steps = np.arange(1, len(metrics["step_losses"]) + 1)
    ax_loss.plot(steps, metrics["step_losses"], lw=0.8, label="jconv (hand-derived rules)")
    if "compare_autodiff" in metrics:
        auto = metrics["compare_autodiff"]["autodiff_step_losses"]
        ax_loss.plot(
            np.arange(1, len(auto) + 1),
            auto,
            "--",
            lw=0.8,
            label="plain autodiff (jax.grad of lax)",
        )
    if metrics["history"] and len(steps):
        per_epoch = len(steps) / len(metrics["history"])
        ax_loss.plot(
            [h["epoch"] * per_epoch for h in metrics["history"]],
            [h["loss"] for h in metrics["history"]],
            "ko-",
            ms=3,
            label="epoch mean (jconv)",
        )
    ax_loss.set(xlabel="step", ylabel="training loss", yscale="log", title="loss")
    ax_loss.legend()
    epochs = [h["epoch"] for h in metrics["history"]]
    ax_acc.plot(epochs, [h["train_accuracy"] for h in metrics["history"]], "o-", label="train")
    ax_acc.plot(epochs, [h["test_accuracy"] for h in metrics["history"]], "s-", label="test")
    if metrics["history"] and "autodiff_test_accuracy" in metrics["history"][0]:
        ax_acc.plot(
            epochs,
            [h["autodiff_test_accuracy"] for h in metrics["history"]],
            "x--",
            label="test (autodiff)",
        )
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
