"""read_loss_history: a finished run's loss (and gradient norm) at every logged step, from its TensorBoard event
files or Lightning's CSV ``metrics.csv``.  ``offline.analyse_checkpoints`` lines checkpoints up with it; the
``analyse`` command's ``--logs``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ._checks import finite_or_none

__all__ = ["GRAD_NORM_TAGS", "read_loss_history"]

# Gradient norms in a run's logs, first found wins: the monitor's, DSRModule's (both before the optimizer step).
GRAD_NORM_TAGS: tuple[str, ...] = ("bifurcation/grad_norm", "grad_norm")


def read_loss_history(
    logs: str | Path, loss_key: str = "train_loss", *, exclude: str | Path | None = None
) -> list[tuple[int, float | None, float | None]]:
    """``(step, loss, grad_norm)`` at every step a run logged its loss, from its TensorBoard event files or its
    CSV ``metrics.csv`` (Lightning's ``CSVLogger``).

    The loss is the scalar ``loss_key``, else ``loss_key + "_step"`` (Lightning's name for a metric logged both
    on_step and on_epoch); the gradient norm is the first of ``GRAD_NORM_TAGS`` there is (the monitor's, or
    ``DSRModule``'s ``grad_norm``), else None.  A step logged twice (a resumed run) keeps its last value; a non-finite loss reads None.

    Parameters
    ----------
    logs : path
        An event file, a ``.csv`` file, or the folder of one run (its files, else those of the one folder below
        it that has any).
    loss_key : str
    exclude : path, optional
        A folder whose files are not read (the offline analysis' own output inside the run's folder).

    Raises
    ------
    ValueError
        No such path, no log files, log files of several runs, or no loss scalar (the message lists the
        scalars there are).

    Examples
    --------
    >>> import tempfile
    >>> metrics = Path(tempfile.mkdtemp()) / "metrics.csv"
    >>> _ = metrics.write_text("epoch,step,train_loss,val_loss\\n0,0,2.5,\\n0,1,2.0,\\n0,1,,1.5\\n")
    >>> read_loss_history(metrics)
    [(0, 2.5, None), (1, 2.0, None)]
    >>> read_loss_history(metrics, "loss")
    Traceback (most recent call last):
    ...
    ValueError: ...metrics.csv has no 'loss' (nor 'loss_step'); it has: epoch, step, train_loss, val_loss (choose with loss_key / --loss-key)
    """
    files = _log_files(Path(logs), Path(exclude).resolve() if exclude is not None else None)
    columns = _read_csv_logs(files) if files[0].suffix == ".csv" else _read_tensorboard_logs(files)
    where = files[0] if len(files) == 1 else files[0].parent
    for name in (loss_key, f"{loss_key}_step"):
        if name in columns:
            losses = columns[name]
            break
    else:
        raise ValueError(f"{where} has no {loss_key!r} (nor {loss_key + '_step'!r}); it has: "
                         f"{', '.join(sorted(columns)) or 'no scalars'} (choose with loss_key / --loss-key)")
    grad_norms = next((columns[tag] for tag in GRAD_NORM_TAGS if tag in columns), {})
    return [(step, finite_or_none(losses[step]), finite_or_none(grad_norms.get(step))) for step in sorted(losses)]


def _log_files(logs: Path, exclude: Path | None) -> list[Path]:
    """The event files or the CSV file of one run."""
    if logs.is_file():
        return [logs]
    if not logs.is_dir():
        raise ValueError(f"--logs {logs}: no such file or folder")

    def kept(path: Path) -> bool:
        return exclude is None or not path.resolve().is_relative_to(exclude)

    def log_files(folder: Path) -> list[Path]:
        events = sorted(p for p in folder.glob("events.out.tfevents.*") if p.is_file() and kept(p))
        return events or [p for p in [folder / "metrics.csv"] if p.is_file() and kept(p)]

    files = log_files(logs)
    if files:
        return files
    folders = sorted({p.parent for p in logs.rglob("*") if p.name == "metrics.csv" or p.name.startswith("events.out.tfevents.")})
    folders = [folder for folder in folders if log_files(folder)]
    if len(folders) == 1:
        return log_files(folders[0])
    if not folders:
        raise ValueError(f"--logs {logs}: no TensorBoard event files (events.out.tfevents.*) or metrics.csv inside")
    listed = ", ".join(str(folder) for folder in folders)
    raise ValueError(f"--logs {logs} holds the logs of {len(folders)} runs ({listed}); pass the folder of one")


def _read_csv_logs(files: list[Path]) -> dict[str, dict[int, float]]:
    """column -> {step: value} of a Lightning ``metrics.csv`` (empty cells are metrics logged at other times)."""
    columns: dict[str, dict[int, float]] = {}
    with open(files[0], newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "step" not in reader.fieldnames:
            raise ValueError(f"{files[0]}: not a Lightning metrics.csv (no 'step' column)")
        for name in reader.fieldnames:
            columns[name] = {}
        for row in reader:
            step = int(float(row["step"]))
            for name, cell in row.items():
                if cell not in ("", None):
                    columns[name][step] = float(cell)
    return columns


def _read_tensorboard_logs(files: list[Path]) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of every scalar in TensorBoard event files (read in file order: the last wins)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    columns: dict[str, dict[int, float]] = {}
    for file in files:
        accumulator = EventAccumulator(str(file), size_guidance={"scalars": 0})  # 0: every point, not a sample
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            columns.setdefault(tag, {}).update((event.step, event.value) for event in accumulator.Scalars(tag))
    return columns
