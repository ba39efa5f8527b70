"""Matplotlib figures: the bifurcation timeline over the loss curve (more figures below).

Every function takes an optional ``ax`` and returns the Axes it drew on, so figures compose and tests
can inspect them; nothing here opens a window (the Agg backend works headless).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402  (after choosing a headless backend)
from matplotlib.axes import Axes  # noqa: E402

# One colour per bifurcation kind, shared by every figure and the docs.
KIND_COLOURS: dict[str, str] = {
    "appearance": "tab:green",
    "disappearance": "tab:red",
    "stability_change": "tab:purple",
    "border_collision": "tab:orange",
    "degenerate": "black",
}


def plot_timeline(
    records: Sequence[Mapping[str, Any]],
    loss_jumps: Sequence[Mapping[str, Any]] = (),
    *,
    ax: Axes | None = None,
) -> Axes:
    """Loss curve with a vertical line at every bifurcation event (coloured by kind) and a triangle at
    every detected loss jump; the number of cycles on a twin axis.

    Parameters
    ----------
    records : sequence of dict
        The monitor's per-step records (``step``, ``loss``, ``n_cycles``, ``events``), as in ``events.jsonl``.
    loss_jumps : sequence of dict
        ``LossJump.to_dict()`` entries.

    Examples
    --------
    >>> records = [{"step": 1, "loss": 1.0, "n_cycles": {"1": 1}, "events": []},
    ...            {"step": 2, "loss": 0.1, "n_cycles": {"1": 2}, "events": [{"step": 2, "kind": "appearance"}]}]
    >>> plot_timeline(records, [{"step": 2, "direction": "down"}]).get_xlabel()
    'training step'
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.5))
    with_loss = [r for r in records if r.get("loss") is not None]
    ax.plot([r["step"] for r in with_loss], [r["loss"] for r in with_loss], color="tab:blue", lw=1.2, label="loss")
    if with_loss and min(r["loss"] for r in with_loss) > 0:
        ax.set_yscale("log")
    seen: set[str] = set()
    for record in records:
        for event in record.get("events", []):
            kind = event["kind"]
            ax.axvline(
                event["step"], color=KIND_COLOURS.get(kind, "grey"), alpha=0.6, lw=1,
                label=kind.replace("_", " ") if kind not in seen else None,
            )
            seen.add(kind)
    losses = {r["step"]: r["loss"] for r in with_loss}
    jump_steps = [j["step"] for j in loss_jumps if j["step"] in losses]
    if jump_steps:
        ax.scatter(jump_steps, [losses[s] for s in jump_steps], marker="v", color="crimson", zorder=3, label="loss jump")
    counted = [r for r in records if "n_cycles" in r]
    if counted:
        twin = ax.twinx()
        twin.step([r["step"] for r in counted], [sum(r["n_cycles"].values()) for r in counted], where="post",
                  color="grey", lw=0.8, alpha=0.7)
        twin.set_ylabel("number of cycles", color="grey")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.set_title("Bifurcations and loss jumps")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize="small")
    return ax
