"""BifurcationMonitor in real Trainer runs: event files read back, planted bifurcations, robustness, resume."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tbparse import SummaryReader
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bifurcation_callback import session as session_module
from bifurcation_callback import tracking as tracking_module
from bifurcation_callback.callback import LOGGED_METRICS, BifurcationMonitor
from bifurcation_callback.cycles import find_cycles
from bifurcation_callback.dashboard import read_jsonl, summary_line, summary_markdown

from .problems import UnmaskedPLRNN
from .tiny_modules import (
    DestroyProcessGroupAtTeardown,
    TinyRNNModule,
    TinyRNNWithReferenceStates,
    plrnn_2d,
    quiet_trainer_kwargs,
    random_sequences,
)


def fit(tmp_path, module, monitor, max_steps=12, **trainer_overrides) -> pl.Trainer:
    trainer = pl.Trainer(max_steps=max_steps, callbacks=[monitor], **quiet_trainer_kwargs(tmp_path, **trainer_overrides))
    trainer.fit(module, random_sequences())
    return trainer


def scalars_of(log_dir) -> "dict[str, dict[int, float]]":
    frame = SummaryReader(str(log_dir)).scalars
    table: dict[str, dict[int, float]] = {}
    for tag, step, value in zip(frame["tag"], frame["step"], frame["value"]):
        table.setdefault(tag, {})[int(step)] = float(value)
    return table


def test_tensorboard_run_logs_counts_equal_to_final_cycles(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="run")
    module = TinyRNNModule()
    monitor = BifurcationMonitor(mode="sync", max_order=3, log_figures_every_n_steps=5)
    trainer = fit(tmp_path, module, monitor, logger=logger)
    scalars = scalars_of(logger.log_dir)
    for tag in ("bifurcation/n_cycles/order_1", "bifurcation/n_cycles/order_3", "bifurcation/loss", "bifurcation/n_stable/total"):
        assert tag in scalars, sorted(scalars)
    last = trainer.global_step - 1  # Lightning's step of the last batch
    expected = find_cycles(module.rnn, max_order=3, n_starts=512)
    for order, count in expected.counts().items():
        assert scalars[f"bifurcation/n_cycles/order_{order}"][last] == count
    assert scalars["bifurcation/n_stable/total"][last] == expected.n_stable
    assert "bifurcation/summary" in set(SummaryReader(str(logger.log_dir)).text["tag"])
    # tbparse needs tensorflow for images; tensorboard's own reader does not (size_guidance 0 = keep all).
    accumulator = EventAccumulator(str(logger.log_dir), size_guidance={"images": 0}).Reload()
    assert {"bifurcation/state_space", "bifurcation/timeline"} <= set(accumulator.Tags()["images"])
    summary = json.loads((Path(logger.log_dir) / "summary.json").read_text())
    assert summary["n_monitored_steps"] == trainer.global_step and summary["n_skipped"] == 0


def test_every_emitted_scalar_is_documented(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="run")
    fit(tmp_path, TinyRNNModule(), BifurcationMonitor(mode="sync", max_order=2), logger=logger)
    patterns = [re.compile("^" + re.sub(r"\\\{\w+\\\}", r"\\d+", re.escape(key)) + "$") for key in LOGGED_METRICS]
    emitted = [tag for tag in scalars_of(logger.log_dir) if tag.startswith("bifurcation/")]
    assert emitted
    for tag in emitted:
        assert any(p.match(tag) for p in patterns), f"{tag} is logged but not in LOGGED_METRICS"
    for key in LOGGED_METRICS:
        assert f"``{key}``" in BifurcationMonitor.__doc__ or key.split("/")[-1] in BifurcationMonitor.__doc__


def flip_at(step_of_change: int):
    """W = 0 makes the map linear, z' = A z + h: a₀ jumping from −0.8 to −1.2 makes the fixed point's
    multiplier cross −1 (flip) while the fixed point persists in the same region."""

    def schedule(step: int, rnn) -> None:
        if step == step_of_change:
            rnn.A[0] = -1.2

    return schedule


def test_planted_flip_is_logged_at_the_right_step(tmp_path):
    rnn = plrnn_2d(A=(-0.8, 0.5), W=((0.0, 0.0), (0.0, 0.0)), h=(0.3, 0.2))
    module = TinyRNNModule(rnn, lr=0.0, schedule=flip_at(6))
    monitor = BifurcationMonitor(mode="sync", max_order=2, jsonl_path=str(tmp_path / "out" / "events.jsonl"))
    fit(tmp_path, module, monitor, logger=False)
    events = monitor.events
    assert len(events) == 2, events
    event, attractor = events
    # The weights change inside training step 6 (the batch Lightning logs at step 6); the monitor sees them
    # after that batch's optimizer step and records them at the same step.
    assert (event.kind, event.crossing, event.order) == ("stability_change", "-1", 1)
    assert event.step == 6 and event.step_interval == (5, 6)
    # With W = 0 the map is linear: past the flip, orbits leave every bounded set.
    assert (attractor.kind, attractor.step, attractor.step_interval) == ("attractor_change", 6, (5, 6))
    assert attractor.description == "attractor changed from fixed point to divergent"
    records = read_jsonl(tmp_path / "out" / "events.jsonl")
    assert [r["step"] for r in records if r["events"]] == [6]


def test_localize_events_places_the_flip_inside_its_step(tmp_path):
    rnn = plrnn_2d(A=(-0.8, 0.5), W=((0.0, 0.0), (0.0, 0.0)), h=(0.3, 0.2))
    module = TinyRNNModule(rnn, lr=0.0, schedule=flip_at(6))
    monitor = BifurcationMonitor(mode="sync", max_order=2, localize_events=True, max_attractor_period=0)
    fit(tmp_path, module, monitor, logger=False)
    (event,) = monitor.events
    # Along the straight weight path a₀(t) = −0.8 − 0.4 t the multiplier a₀ reaches −1 at t = 1/2.
    assert event.location == pytest.approx(5.5, abs=1e-3)


@pytest.mark.parametrize("problem", ["nan_weights", "finder_error"])
def test_problems_warn_count_and_training_finishes(tmp_path, monkeypatch, problem):
    monitor_kwargs = {"max_order": 2}
    schedule = None
    if problem == "nan_weights":

        healthy = plrnn_2d()

        def schedule(step, rnn):
            # NaN weights after step 4's update (recorded at step 4), healthy again from step 5 on.
            if step == 4:
                rnn.h[0] = float("nan")
            elif step == 5:
                rnn.load_state_dict(healthy.state_dict())

    elif problem == "finder_error":

        def broken(*args, **kwargs):
            raise RuntimeError("solver exploded")

        monkeypatch.setattr(tracking_module, "search_fresh", broken)
    monitor = BifurcationMonitor(mode="sync", **monitor_kwargs)
    module = TinyRNNModule(lr=0.0, schedule=schedule)
    with pytest.warns(RuntimeWarning, match="BifurcationMonitor skipped step") as caught:
        trainer = fit(tmp_path, module, monitor, max_steps=8, logger=False)
    # The warning names the line that called trainer.fit (here the test's helper), not a line of the monitor or
    # of Lightning, whose source line printed under the message would mean nothing to the user.
    (skipped,) = [w for w in caught if "skipped step" in str(w.message)]
    assert (Path(skipped.filename).name, skipped.lineno) == (Path(__file__).name, fit.__code__.co_firstlineno + 2)
    assert trainer.global_step == 8
    assert monitor.n_skipped >= 1
    if problem == "nan_weights":
        assert monitor.n_skipped == 1 and monitor.summary["skip_reasons"] == {"ValueError": 1}
        assert [r["step"] for r in monitor.records if "skipped" in r] == [4]
    else:
        assert monitor.n_skipped == 8


@pytest.mark.parametrize("loggers", ["none", "csv", "both"])
def test_logger_combinations(tmp_path, loggers):
    csv = CSVLogger(str(tmp_path), name="csv")
    tensorboard = TensorBoardLogger(str(tmp_path), name="tb")
    chosen = {"none": False, "csv": [csv], "both": [tensorboard, csv]}[loggers]
    monitor = BifurcationMonitor(mode="sync", max_order=2)
    trainer = fit(tmp_path, TinyRNNModule(), monitor, max_steps=5, logger=chosen)
    assert monitor.summary is not None and monitor.summary["n_monitored_steps"] == 5
    assert (Path(monitor.log_dir) / "events.jsonl").is_file()
    if loggers != "none":
        assert monitor.log_dir == trainer.log_dir
    if loggers != "none":
        metrics = (Path(csv.log_dir) / "metrics.csv").read_text()
        assert "bifurcation/n_cycles/order_1" in metrics
    if loggers == "both":
        assert "bifurcation/n_cycles/total" in scalars_of(tensorboard.log_dir)


def test_resume_restores_state_without_duplicated_or_missing_steps(tmp_path):
    jsonl = tmp_path / "monitor" / "events.jsonl"
    checkpoints = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, every_n_train_steps=5)
    module = TinyRNNModule()
    first = pl.Trainer(
        max_steps=5, callbacks=[BifurcationMonitor(mode="sync", max_order=2, jsonl_path=str(jsonl)), checkpoints],
        **quiet_trainer_kwargs(tmp_path, enable_checkpointing=True, logger=False),
    )
    first.fit(module, random_sequences())
    resumed_monitor = BifurcationMonitor(mode="sync", max_order=2, jsonl_path=str(jsonl))
    second = pl.Trainer(max_steps=10, callbacks=[resumed_monitor], **quiet_trainer_kwargs(tmp_path, logger=False))
    second.fit(TinyRNNModule(), random_sequences(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    steps = [record["step"] for record in read_jsonl(jsonl)]
    assert steps == list(range(10))
    # The restored cycle set was the warm start: the model trained on smoothly, so no event at step 5.
    assert all(not record["events"] for record in read_jsonl(jsonl) if record["step"] == 5)
    assert resumed_monitor.summary["n_monitored_steps"] == 10


def test_two_instances_have_distinct_state_keys():
    assert BifurcationMonitor(max_order=2).state_key != BifurcationMonitor(max_order=3).state_key
    assert BifurcationMonitor(model_attr="a").state_key != BifurcationMonitor(model_attr="b").state_key


@pytest.mark.parametrize("mode_kwargs", [{"mode": "sync"}, {"mode": "async", "queue_size": None}], ids=["sync", "async"])
def test_works_with_classic_pytorch_lightning_trainer(tmp_path, mode_kwargs):
    import pytorch_lightning

    class ClassicModule(pytorch_lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.rnn = plrnn_2d()

        training_step = TinyRNNModule.training_step
        configure_optimizers = TinyRNNModule.configure_optimizers
        lr = 1e-2
        schedule = None

    monitor = BifurcationMonitor(max_order=2, **mode_kwargs)
    trainer = pytorch_lightning.Trainer(max_steps=4, callbacks=[monitor], **quiet_trainer_kwargs(tmp_path, logger=False))
    trainer.fit(ClassicModule(), random_sequences())
    assert monitor.summary["n_monitored_steps"] == 4 and monitor.summary["mode"] == mode_kwargs["mode"]


def test_model_detection_errors():
    class NoRNN(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(2, 2)

    class TwoRNNs(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.a, self.b = plrnn_2d(), plrnn_2d()

    with pytest.raises(TypeError, match="no piecewise-linear RNN"):
        BifurcationMonitor().setup(None, NoRNN(), "fit")
    with pytest.raises(ValueError, match=r"several piecewise-linear models \(a, b\)"):
        BifurcationMonitor().setup(None, TwoRNNs(), "fit")
    with pytest.raises(ValueError, match="no attribute 'c'"):
        BifurcationMonitor(model_attr="c").setup(None, TwoRNNs(), "fit")
    monitor = BifurcationMonitor(model_attr="b")
    monitor.setup(None, TwoRNNs(), "fit")


# Per public argument: values that must raise a ValueError naming the argument, and edge values accepted.
ARGUMENT_CASES = {
    "max_order": ([0, -1, 1.5, True, "2", None], [1, 7]),
    "every_n_steps": ([0, 1.5, True, "2"], [None, 1, 1000]),
    "every_n_epochs": ([0, -1, 1.5, True, "2"], [None, 1, 3]),
    "model_attr": (["", 3, ["rnn"]], [None, "rnn", "model.rnn"]),
    "finder_kwargs": (
        [{"speed": 1}, {"dtype": "float16"}, {"dtype": torch.int64}, {"n_starts": 0}, {"inner": 1.5},
         {"outer": True}, {"device": "no-such-device"}, {"device": 3.5}, ["n_starts"], "n_starts=4"],
        [None, {}, {"dtype": "float32"}, {"dtype": torch.float64}, {"n_starts": 1, "inner": 1, "outer": 1},
         {"device": "cpu"}, {"device": torch.device("cpu")}, {"device": None}],
    ),
    "time_budget_s": ([True, 0, -1, float("nan"), float("inf"), "1"], [None, 1e-9, 3]),
    "loss_key": (["", None, 1], ["train_loss", "loss"]),
    "log_figures_every_n_steps": ([-1, 1.0, False, None], [0, 5]),
    "jsonl_path": (["", 1, b"events.jsonl"], [None, "events.jsonl", Path("out") / "events.jsonl"]),
    "jump_window": ([-2, 1.5, True], [None, 0, 10]),
    "jump_warmup_steps": ([-1, 0.5, None, True], [0, 100]),
    "jump_min_change": ([-0.5, True, None, float("nan"), "1"], [0, 0.0, 2.5]),
    "jump_scales": ([[], [0], [1, 1], "13", [1.5], None, 3], [(1,), [1, 3, 10, 30], (30, 10)]),
    "max_tracked_cycles": ([None, -1, 2.0, True], [0, 8]),
    "max_attractor_period": ([None, -1, 2.5, True, "256"], [0, 1, 256]),
    "localize_events": (["yes", 1, None], [True, False]),
    "seed": ([-1, 0.5, None, True], [0, 12345]),
    "show_all_events": (["yes", 1, None], [True, False]),
    "verbose": (["no", 0, None], [True, False]),
    "mode": (["asynchronous", None, 1, "ASYNC"], ["auto", "async", "sync"]),
    "worker": (["processes", None, "fork"], ["process", "thread"]),
    "queue_size": ([0, -1, 1.5, True, "1"], [None, 1, 64]),
    "drain_timeout_s": ([-1, True, float("nan"), "5"], [None, 0, 0.5, 60]),
}


def test_every_public_argument_has_validation_cases():
    import inspect

    assert set(ARGUMENT_CASES) == set(inspect.signature(BifurcationMonitor.__init__).parameters) - {"self"}


@pytest.mark.parametrize("argument", sorted(ARGUMENT_CASES))
def test_constructor_validates_argument(argument):
    bad_values, good_values = ARGUMENT_CASES[argument]
    for value in bad_values:
        with pytest.raises(ValueError, match=f"^BifurcationMonitor: {argument}"):
            BifurcationMonitor(**{argument: value})
    for value in good_values:
        BifurcationMonitor(**{argument: value})


def test_a_max_order_the_first_search_cannot_finish_is_refused_or_warned_with_its_cost():
    with pytest.raises(ValueError, match=r"^BifurcationMonitor: max_order must be at most 1000, got 1000000: .* "
                                         r"would multiply 1\.0e\+16 Jacobians"):
        BifurcationMonitor(max_order=10**6)
    with pytest.warns(RuntimeWarning, match=r"max_order=500 makes the first search multiply about 2\.6e\+09"):
        BifurcationMonitor(max_order=500)


def test_every_n_steps_and_every_n_epochs_are_mutually_exclusive():
    with pytest.raises(ValueError, match=r"^BifurcationMonitor: every_n_steps and every_n_epochs are mutually exclusive, "
                                         r"got every_n_steps=1 and every_n_epochs=2"):
        BifurcationMonitor(every_n_steps=1, every_n_epochs=2)
    assert (BifurcationMonitor().every_n_steps, BifurcationMonitor().every_n_epochs) == (1, None)
    by_epoch = BifurcationMonitor(every_n_epochs=2)
    assert (by_epoch.every_n_steps, by_epoch.every_n_epochs, by_epoch.jump_window) == (None, 2, None)


def test_finder_kwargs_are_normalised_and_unknown_keys_list_the_allowed_ones():
    monitor = BifurcationMonitor(finder_kwargs={"dtype": "float32", "device": "cpu"})
    assert monitor.finder_kwargs == {"dtype": torch.float32, "device": torch.device("cpu")}
    with pytest.raises(ValueError, match=r"finder_kwargs has unknown keys \['speed'\]; allowed: \['device', 'dtype', 'exhaustive_limit', 'inner'"):
        BifurcationMonitor(finder_kwargs={"speed": 1})


@pytest.mark.slow
def test_ddp_spawn_only_rank_zero_writes(tmp_path):
    jsonl = tmp_path / "events.jsonl"
    monitor = BifurcationMonitor(mode="sync", max_order=2, jsonl_path=str(jsonl))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(
            max_steps=4,
            callbacks=[monitor, DestroyProcessGroupAtTeardown()],
            **quiet_trainer_kwargs(tmp_path, strategy="ddp_spawn", devices=2, logger=False),
        )
        trainer.fit(TinyRNNModule(), random_sequences())
    steps = [record["step"] for record in read_jsonl(jsonl)]
    assert steps == [0, 1, 2, 3]
    assert json.loads((tmp_path / "summary.json").read_text())["n_monitored_steps"] == 4


class ScriptedLoss(TinyRNNModule):
    """Logs a scripted `train_loss` (the optimisation itself is irrelevant to the jump statistics)."""

    def __init__(self, script):
        super().__init__(lr=0.0)
        self.script = script

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train_loss", float(self.script(self.global_step)), on_step=True, on_epoch=False)
        return loss


def test_loss_jumps_skip_the_warmup_and_find_a_planted_jump(tmp_path):
    noise = torch.Generator().manual_seed(0)

    def script(step):
        # A fast first descent (÷3 per step), then slow decay with 2 % noise, and a ×3 jump at step 30.
        base = 0.5 * 0.99**step * (3.0 if step >= 30 else 1.0) * float(torch.exp(0.02 * torch.randn(1, generator=noise)))
        return base * 3.0 ** max(0, 3 - step)

    monitor = BifurcationMonitor(mode="sync", max_order=1, jump_warmup_steps=5)
    trainer = pl.Trainer(max_steps=45, callbacks=[monitor], **quiet_trainer_kwargs(tmp_path, logger=False))
    trainer.fit(ScriptedLoss(script), random_sequences(n=400))
    # The monitor's step is the one the module saw when it logged (Lightning's logging step).
    assert [(jump["step"], jump["direction"]) for jump in monitor.summary["loss_jumps"]] == [(30, "up")]
    unguarded = BifurcationMonitor(mode="sync", max_order=1, jump_warmup_steps=0)
    trainer = pl.Trainer(max_steps=45, callbacks=[unguarded], **quiet_trainer_kwargs(tmp_path, logger=False))
    noise.manual_seed(0)
    trainer.fit(ScriptedLoss(script), random_sequences(n=400))
    assert [jump["step"] for jump in unguarded.summary["loss_jumps"]][-1] == 30
    assert len(unguarded.summary["loss_jumps"]) > 1  # the first descent reads as jumps without the warm-up


def test_a_time_budget_never_stalls_the_monitor(tmp_path):
    """A budget too small for any search used to skip every step forever; now every step is recorded, its
    counts marked as lower bounds (status "cut"), with one warning and no event."""
    monitor = BifurcationMonitor(mode="sync", max_order=2, time_budget_s=1e-9, max_attractor_period=0)
    with pytest.warns(RuntimeWarning, match="lower bounds"):
        fit(tmp_path, TinyRNNModule(lr=0.0), monitor, max_steps=6, logger=False)
    assert monitor.n_skipped == 0 and len(monitor.records) == 6
    assert all(set(record["statuses"].values()) == {"cut"} for record in monitor.records)
    assert monitor.events == []


def test_a_large_model_with_a_small_budget_catches_up_from_its_warm_start(tmp_path):
    from bifurcation_callback.models import ShallowPLRNN

    torch.manual_seed(0)
    rnn = ShallowPLRNN(latent_dim=2, hidden_dim=60)  # far too many regions to enumerate orders 2-3
    monitor = BifurcationMonitor(mode="sync", max_order=3, time_budget_s=0.02, max_attractor_period=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fit(tmp_path, TinyRNNModule(rnn, lr=0.0), monitor, max_steps=8, logger=False)
    assert monitor.n_skipped == 0 and len(monitor.records) == 8
    totals = [sum(record["n_cycles"].values()) for record in monitor.records]
    assert totals[-1] >= totals[0]  # the warm start carries what earlier (cut) searches found


def test_newly_born_cycles_are_counted_at_the_step_they_are_born(tmp_path):
    """z' = 0.5 z + relu(z) + mu: no fixed point for mu > 0, a pair (2 mu and -2 mu) at a border for mu < 0.
    mu jumps from +0.1 to -0.1 inside step 6; no previous cycle exists, so only the search for new cycles can
    find the pair; every order of this model is enumerated, so the bracket is exactly (5, 6]."""
    from bifurcation_callback.models import ShallowPLRNN

    rnn = ShallowPLRNN(latent_dim=1, hidden_dim=1)
    with torch.no_grad():
        rnn.A.fill_(0.5), rnn.W1.fill_(1.0), rnn.W2.fill_(1.0), rnn.h2.fill_(0.0), rnn.h1.fill_(0.1)

    def schedule(step, model):
        if step == 6:
            model.h1.fill_(-0.1)

    monitor = BifurcationMonitor(mode="sync", max_order=2)
    trainer = pl.Trainer(max_steps=20, callbacks=[monitor], **quiet_trainer_kwargs(tmp_path, logger=False))
    trainer.fit(TinyRNNModule(rnn, lr=0.0, schedule=schedule), random_sequences(dim=1))
    events = [e for e in monitor.events if e.kind != "attractor_change"]
    assert [(e.kind, e.order) for e in events] == [("border_collision", 1), ("border_collision", 1)]
    # no fixed point before: orbits diverged; after, the stable one of the pair attracts them
    (attractor,) = [e for e in monitor.events if e.kind == "attractor_change"]
    assert attractor.step_interval == (5, 6) and attractor.description.endswith("to fixed point")
    # Every order of this 1-D model is enumerated at every monitored step: found at the step it is born.
    assert [event.step_interval for event in events] == [(5, 6), (5, 6)]
    assert sorted(round(float(c.points[0, 0]), 6) for c in monitor.cycles) == [-0.2, 0.2]


# ---------------------------------------------------------------------------------------------- bug regressions


class LossLoggedPerEpoch(TinyRNNModule):
    """Logs `train_loss` as told (on_epoch only by default) and remembers each step's own loss."""

    def __init__(self, how: str = "on_epoch"):
        super().__init__()
        self.how = how
        self.step_losses: list[float] = []

    def training_step(self, batch, batch_idx):
        (sequence,) = batch
        loss = torch.mean((self.rnn.step(sequence[:, :-1]) - sequence[:, 1:]) ** 2)
        if self.how != "not logged":
            self.log("train_loss", loss, on_step=self.how == "on_step and on_epoch", on_epoch=True)
        self.step_losses.append(float(loss))
        return {"loss": loss} if self.how == "not logged" else loss


@pytest.mark.parametrize("how", ["on_epoch", "on_step and on_epoch", "not logged"])
def test_loss_logged_on_epoch_only_records_each_steps_own_loss(tmp_path, how):
    module = LossLoggedPerEpoch(how)
    monitor = BifurcationMonitor(mode="sync", max_order=1)
    trainer = pl.Trainer(max_epochs=2, callbacks=[monitor], **quiet_trainer_kwargs(tmp_path, logger=False))
    trainer.fit(module, random_sequences())  # 8 batches per epoch
    assert len(module.step_losses) == 16
    assert [r["loss"] for r in monitor.records] == pytest.approx(module.step_losses, rel=1e-6)


@pytest.mark.parametrize("accumulate_grad_batches", [1, 3])
def test_monitor_scalars_share_lightnings_step_for_the_same_batch(tmp_path, accumulate_grad_batches):
    logger = TensorBoardLogger(str(tmp_path), name="run")
    monitor = BifurcationMonitor(mode="sync", max_order=1)
    fit(tmp_path, TinyRNNModule(), monitor, max_steps=6, logger=logger, accumulate_grad_batches=accumulate_grad_batches)
    # EventAccumulator with size_guidance 0 keeps every point (the default keeps a reservoir sample).
    accumulator = EventAccumulator(str(logger.log_dir), size_guidance={"scalars": 0}).Reload()
    lightning = {e.step: e.value for e in accumulator.Scalars("train_loss")}
    ours = {e.step: e.value for e in accumulator.Scalars("bifurcation/loss")}
    assert sorted(lightning) == sorted(ours) == list(range(6))
    for step, value in lightning.items():
        assert ours[step] == pytest.approx(value, rel=1e-6), step
    assert [record["step"] for record in monitor.records] == list(range(6))


def test_without_logger_and_jsonl_path_runs_never_overwrite_each_other(tmp_path, monkeypatch):
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    monitors = []
    for seed in (0, 1):
        monitor = BifurcationMonitor(mode="sync", max_order=1)
        kwargs = quiet_trainer_kwargs(tmp_path, logger=False)
        del kwargs["default_root_dir"]  # Lightning's default: the current directory
        trainer = pl.Trainer(max_steps=3 + seed, callbacks=[monitor], **kwargs)
        trainer.fit(TinyRNNModule(), random_sequences(seed=seed))
        monitors.append(monitor)
    assert not (workdir / "events.jsonl").exists() and not (workdir / "summary.json").exists()
    folders = [Path(m.log_dir) for m in monitors]
    assert folders[0] != folders[1]
    for folder, n_steps in zip(folders, (3, 4)):
        assert folder.resolve().is_relative_to(workdir.resolve())
        assert len(read_jsonl(folder / "events.jsonl")) == n_steps
        assert json.loads((folder / "summary.json").read_text())["n_monitored_steps"] == n_steps


def test_tracked_cycle_tags_are_capped_for_the_whole_run(tmp_path):
    """z' = 0.5 z + relu(z) + mu has two fixed points for mu < 0 and none for mu > 0: the pair vanishes at
    step 4 and is born again at step 9 as new tracks; with max_tracked_cycles=2 only two tags ever exist."""
    from bifurcation_callback.models import ShallowPLRNN

    rnn = ShallowPLRNN(latent_dim=1, hidden_dim=1)
    with torch.no_grad():
        rnn.A.fill_(0.5), rnn.W1.fill_(1.0), rnn.W2.fill_(1.0), rnn.h2.fill_(0.0), rnn.h1.fill_(-0.1)

    def schedule(step, model):
        if step in (4, 9):
            model.h1.fill_(0.1 if step == 4 else -0.1)

    logger = TensorBoardLogger(str(tmp_path), name="run")
    monitor = BifurcationMonitor(mode="sync", max_order=1, max_tracked_cycles=2)
    trainer = pl.Trainer(max_steps=16, callbacks=[monitor], **quiet_trainer_kwargs(tmp_path, logger=logger))
    trainer.fit(TinyRNNModule(rnn, lr=0.0, schedule=schedule), random_sequences(n=200, dim=1))
    assert len(monitor.cycles) == 2 and len(monitor.events) >= 2  # born again, as new tracks
    tags = {tag for tag in scalars_of(logger.log_dir) if tag.startswith("bifurcation/max_abs_eig/cycle_")}
    assert len(tags) == 2, sorted(tags)


def test_no_loss_jumps_reads_n_a_not_a_fraction(tmp_path):
    monitor = BifurcationMonitor(mode="sync", max_order=1, jsonl_path=str(tmp_path / "out" / "events.jsonl"))
    trainer = fit(tmp_path, TinyRNNModule(lr=0.0), monitor, max_steps=6, logger=False)
    assert monitor.summary["loss_jumps"] == []
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["jump_correlation"]["jumps_explained"] is None
    assert saved["jump_correlation"]["p_value"] is None
    table = summary_markdown(monitor.summary)
    assert "| jumps with an event nearby | n/a |" in table and "p = 1" not in table
    assert trainer.global_step == 6


def test_a_model_whose_pieces_disagree_with_its_step_fails_at_setup_before_training(tmp_path):
    # UnmaskedPLRNN forgets W's zero diagonal in affine_pieces: every step's cycle set would be silently wrong.
    module = TinyRNNModule(UnmaskedPLRNN(2))
    with pytest.raises(ValueError, match="BifurcationMonitor: .*affine_pieces"):
        fit(tmp_path, module, BifurcationMonitor(mode="sync", max_order=1), max_steps=2)
    assert module.rnn.W.grad is None  # no training step ran


# ---------------------------------------------------------------------------------------------- what a user asked for


def test_every_n_epochs_analyses_the_last_batch_of_every_nth_epoch(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="run")
    monitor = BifurcationMonitor(mode="sync", max_order=2, every_n_epochs=2)
    trainer = pl.Trainer(max_epochs=5, callbacks=[monitor], **quiet_trainer_kwargs(tmp_path, logger=logger))
    trainer.fit(TinyRNNModule(), random_sequences())  # 8 batches per epoch: steps 0..39
    # Epochs 2 and 4 (counted from 1) end with the batches Lightning logs at steps 15 and 31; epoch 5 is not due.
    assert [record["step"] for record in monitor.records] == [15, 31]
    accumulator = EventAccumulator(str(logger.log_dir), size_guidance={"scalars": 0}).Reload()
    ours = {e.step: e.value for e in accumulator.Scalars("bifurcation/loss")}
    lightning = {e.step: e.value for e in accumulator.Scalars("train_loss")}
    assert sorted(ours) == [15, 31]
    for step in (15, 31):  # the analysed batch's own loss, at the step Lightning gives it
        assert ours[step] == pytest.approx(lightning[step], rel=1e-6)
    assert {e.step for e in accumulator.Scalars("bifurcation/n_cycles/total")} == {15, 31}
    # Loss jumps are still looked for in every step's loss; the default window is 5 analyses' worth of steps.
    assert monitor.summary["final_step"] == 39 and monitor.summary["every_n_epochs"] == 2
    assert monitor.summary["jump_correlation"]["window"] == 5 * 16
    assert read_jsonl(Path(logger.log_dir) / "events.jsonl")[-1]["step"] == 31


@pytest.mark.parametrize(
    "trainer_kwargs, expected",
    [
        # 8 batches, 3 accumulated per optimizer step: steps after batches 3, 6 and 8 -> 3 steps per epoch.
        ({"max_epochs": 2, "accumulate_grad_batches": 3}, [2, 5]),
        # max_steps ends the third epoch after 4 of its batches: that epoch still ends, and is analysed.
        ({"max_steps": 20}, [19]),
    ],
)
def test_every_n_epochs_records_the_epochs_last_optimizer_step(tmp_path, trainer_kwargs, expected):
    monitor = BifurcationMonitor(mode="sync", max_order=1, every_n_epochs=3 if "max_steps" in trainer_kwargs else 1)
    trainer = pl.Trainer(callbacks=[monitor], **quiet_trainer_kwargs(tmp_path, logger=False, **trainer_kwargs))
    trainer.fit(TinyRNNModule(), random_sequences())
    assert [record["step"] for record in monitor.records] == expected
    assert monitor.summary["final_step"] == expected[-1]


def test_every_n_epochs_resumes_like_an_uninterrupted_run(tmp_path):
    def run(folder, max_epochs, ckpt_path=None, checkpoint=False):
        callbacks = [BifurcationMonitor(mode="sync", max_order=2, every_n_epochs=2, jsonl_path=str(folder / "events.jsonl"))]
        if checkpoint:
            callbacks.append(ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, every_n_epochs=1))
        trainer = pl.Trainer(
            max_epochs=max_epochs, callbacks=callbacks,
            **quiet_trainer_kwargs(tmp_path, enable_checkpointing=checkpoint, logger=False),
        )
        rnn = plrnn_2d(A=(-0.8, 0.5), W=((0.0, 0.0), (0.0, 0.0)), h=(0.3, 0.2))
        trainer.fit(TinyRNNModule(rnn, lr=0.0, schedule=flip_at(28)), random_sequences(), ckpt_path=ckpt_path)
        return callbacks[0]

    whole = run(tmp_path / "whole", 6)
    run(tmp_path / "resumed", 3, checkpoint=True)  # stops after epoch 3: steps 0..23, analysed at 15
    resumed = run(tmp_path / "resumed", 6, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    expected = [15, 31, 47]
    assert [r["step"] for r in whole.records] == [r["step"] for r in resumed.records] == expected
    assert [r["step"] for r in read_jsonl(tmp_path / "resumed" / "events.jsonl")] == expected
    # The flip planted in step 28 shows at the next analysis, bracketed by the previous one, in both runs: the
    # resumed monitor compared against the cycle set restored from the checkpoint.
    assert [(e.step, e.step_interval, e.kind, e.crossing) for e in whole.events] == [
        (31, (15, 31), "stability_change", "-1"), (31, (15, 31), "attractor_change", None)]
    assert [(e.step, e.step_interval, e.kind, e.crossing) for e in resumed.events] == [
        (e.step, e.step_interval, e.kind, e.crossing) for e in whole.events]
    assert [r["n_cycles"] for r in resumed.records] == [r["n_cycles"] for r in whole.records]
    assert resumed.summary["n_monitored_steps"] == 3 and resumed.summary["final_step"] == 47


@pytest.fixture
def lightning_info(caplog, monkeypatch):
    """Lightning's INFO messages (rank_zero_info) in caplog, whatever handler Lightning set up at import."""
    import logging

    monkeypatch.setattr(logging.getLogger("lightning.pytorch"), "propagate", True)
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    return caplog


def monitor_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("BifurcationMonitor:")]


def test_fit_end_prints_one_summary_line_unless_verbose_is_false(tmp_path, lightning_info):
    monitor = BifurcationMonitor(mode="sync", max_order=1)
    fit(tmp_path, TinyRNNModule(lr=0.0), monitor, max_steps=6, logger=False)
    (line,) = monitor_lines(lightning_info)
    assert re.fullmatch(r"BifurcationMonitor: 0 events, 0 loss jumps, n/a with an event nearby, 6 of 6 monitored steps "
                        r"analysed, overhead [\d.]+ %, final attractor: fixed point \(stable\)", line)
    assert line == summary_line(monitor.summary)
    lightning_info.clear()
    fit(tmp_path, TinyRNNModule(lr=0.0), BifurcationMonitor(mode="sync", max_order=1, verbose=False), max_steps=6, logger=False)
    assert monitor_lines(lightning_info) == []


def cross_the_border_at(step_of_change: int):
    """W = 0: the map z' = A z + h is linear, so its stable fixed point h / (1 - A) keeps its multipliers while
    h₀ moving from +0.05 to −0.05 carries it across the switching plane z₀ = 0 (0.1 → −0.1)."""

    def schedule(step: int, rnn) -> None:
        if step == step_of_change:
            rnn.h[0] = -0.05

    return schedule


@pytest.mark.parametrize("show_all_events", [False, True])
def test_border_crossings_that_keep_stability_are_folded_but_kept_in_the_files(tmp_path, lightning_info, show_all_events):
    logger = TensorBoardLogger(str(tmp_path), name="run")
    rnn = plrnn_2d(A=(0.5, 0.5), W=((0.0, 0.0), (0.0, 0.0)), h=(0.05, 0.2))
    module = TinyRNNModule(rnn, lr=0.0, schedule=cross_the_border_at(4))
    monitor = BifurcationMonitor(mode="sync", max_order=1, show_all_events=show_all_events)
    fit(tmp_path, module, monitor, max_steps=8, logger=logger)
    (event,) = monitor.events
    assert (event.kind, event.step, event.stable_before, event.stable_after) == ("border_collision", 4, True, True)
    assert [len(r["events"]) for r in read_jsonl(Path(logger.log_dir) / "events.jsonl")] == [0, 0, 0, 0, 1, 0, 0, 0]
    assert monitor.summary["n_border_crossings"] == 1 and monitor.summary["events_by_kind"]["border_collision"] == 1
    texts = SummaryReader(str(logger.log_dir)).text
    by_tag = {tag: value for tag, value in zip(texts["tag"], texts["value"])}
    (line,) = monitor_lines(lightning_info)
    if show_all_events:
        assert "| 4 | border_collision | 1 |" in by_tag["bifurcation/events"]
        assert "1 (border_collision: 1)" in by_tag["bifurcation/summary"]
        assert line.startswith("BifurcationMonitor: 1 event (1 border collision), 0 loss jumps")
    else:
        assert "bifurcation/events" not in by_tag  # a step of folded crossings only writes no table
        assert "1 (1 border crossing folded)" in by_tag["bifurcation/summary"]
        assert line.startswith("BifurcationMonitor: 1 event (1 border crossing folded), 0 loss jumps")


def test_state_space_figure_gets_orbits_and_the_modules_reference_states(tmp_path, monkeypatch):
    from bifurcation_callback import plots

    drawn = []
    original = plots.plot_cycles

    def spy(cycles, *args, **kwargs):
        drawn.append(kwargs)
        return original(cycles, *args, **kwargs)

    monkeypatch.setattr(plots, "plot_cycles", spy)
    data = torch.randn(4, 6, 2)  # (batch, time, state): flattened to 24 states
    module = TinyRNNWithReferenceStates(data)
    logger = TensorBoardLogger(str(tmp_path), name="run")
    fit(tmp_path, module, BifurcationMonitor(mode="sync", max_order=2, log_figures_every_n_steps=3), max_steps=6, logger=logger)
    assert len(drawn) == 3  # steps 2 and 5, and fit end
    for kwargs in drawn:
        assert kwargs["reference"].shape == (24, 2)
        # the orbits of the attractors the step's analysis found (200 points each), not isolated points
        assert kwargs["orbits"] and all(orbit.shape == (200, 2) for orbit in kwargs["orbits"])
    accumulator = EventAccumulator(str(logger.log_dir), size_guidance={"images": 0}).Reload()
    assert len(accumulator.Images("bifurcation/state_space")) == 3

    drawn.clear()
    wrong = TinyRNNWithReferenceStates(torch.randn(10, 3))  # not in the RNN's 2-D state space
    with pytest.warns(RuntimeWarning, match=r"ignores the module.s reference states: .*shape \(\.\.\., 2\)"):
        fit(tmp_path, wrong, BifurcationMonitor(mode="sync", max_order=2, log_figures_every_n_steps=3), max_steps=3,
            logger=TensorBoardLogger(str(tmp_path), name="wrong"))
    assert drawn and all(kwargs["reference"] is None for kwargs in drawn)


def test_final_attractor_is_the_last_steps_never_an_older_one(tmp_path):
    # NaN weights from step 4 on: every later step is skipped, so there is no final attractor to report.
    def schedule(step, rnn):
        if step >= 4:
            rnn.h[0] = float("nan")

    monitor = BifurcationMonitor(mode="sync", max_order=1)
    with pytest.warns(RuntimeWarning, match="skipped step"):
        fit(tmp_path, TinyRNNModule(lr=0.0, schedule=schedule), monitor, max_steps=6, logger=False)
    assert monitor.records[3]["attractor"] is not None and "skipped" in monitor.records[-1]
    assert monitor.summary["final_attractor"] is None


class LogsSeveralWays(TinyRNNModule):
    """Logs the loss on step, on epoch, both, and to the progress bar, from training_step and another hook."""

    def training_step(self, batch, batch_idx):
        (sequence,) = batch
        loss = torch.mean((self.rnn.step(sequence[:, :-1]) - sequence[:, 1:]) ** 2)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("epoch_only", 2 * loss, on_step=False, on_epoch=True)
        self.log("step_only", 3 * loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_before_optimizer_step(self, optimizer):
        self.log("step_only", torch.tensor(float(self.global_step)), on_step=True)  # the same name, a later hook


def test_the_step_loss_lookup_matches_lightnings_own_step_metrics(tmp_path):
    from bifurcation_callback._trainer import _logged_on_step

    seen = []

    class Compare(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            expected = trainer._results.metrics(True)["callback"]
            for name in ("train_loss", "train_loss_step", "epoch_only", "step_only", "missing"):
                ours, theirs = _logged_on_step(trainer._results, name), expected.get(name)
                assert (ours is None and theirs is None) or torch.equal(ours, theirs), (name, ours, theirs)
                seen.append(name if ours is not None else None)

    trainer = pl.Trainer(max_epochs=2, callbacks=[Compare()], **quiet_trainer_kwargs(tmp_path, logger=False))
    trainer.fit(LogsSeveralWays(), random_sequences())
    assert {"train_loss", "train_loss_step", "step_only"} <= set(seen) and "epoch_only" not in seen


class CountingLogger(pl.loggers.Logger):
    """A non-TensorBoard logger that counts the steps the monitor logged its cycle counts at."""

    def __init__(self):
        super().__init__()
        self.steps = []

    @property
    def name(self):
        return "counting"

    @property
    def version(self):
        return 0

    def log_metrics(self, metrics, step=None):
        if "bifurcation/n_cycles/total" in metrics:
            self.steps.append(step)

    def log_hyperparams(self, *args, **kwargs):
        pass


def test_results_are_logged_before_the_next_backward_pass(tmp_path):
    # Logged from on_before_backward: TensorBoard's writer thread checksums them while the backward runs.
    logger, seen = CountingLogger(), []

    class Probe(pl.Callback):  # runs after the monitor
        def on_before_backward(self, trainer, pl_module, loss):
            seen.append((trainer.global_step, list(logger.steps), [r["step"] for r in monitor.records]))

    monitor = BifurcationMonitor(mode="sync", max_order=1)
    trainer = pl.Trainer(max_steps=6, callbacks=[monitor, Probe()], logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(TinyRNNModule(), random_sequences())
    for global_step, logged, recorded in seen:
        assert logged == recorded == list(range(global_step))  # every earlier step, in order, before this backward
    assert logger.steps == [r["step"] for r in monitor.records] == list(range(6))  # the last one at fit end
    # A logger without a folder of its own (no save_dir): events.jsonl goes to a fresh folder of the default root.
    assert Path(monitor.log_dir).resolve().is_relative_to(tmp_path.resolve())
    assert len(read_jsonl(Path(monitor.log_dir) / "events.jsonl")) == 6


class NoBackward(TinyRNNModule):
    """Manual optimization that never calls backward (so on_before_backward never runs)."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.optimizers().step()
        return loss


def test_results_are_logged_without_backward_passes_too(tmp_path):
    pending = []

    class Probe(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            pending.append(monitor.session.n_unpublished)

    monitor = BifurcationMonitor(mode="sync", max_order=1)
    trainer = pl.Trainer(max_epochs=2, callbacks=[monitor, Probe()], **quiet_trainer_kwargs(tmp_path, logger=False))
    trainer.fit(NoBackward(), random_sequences())  # 8 batches per epoch
    assert 0 < max(pending) <= session_module.MAX_UNPUBLISHED
    lines = read_jsonl(Path(monitor.log_dir) / "events.jsonl")
    assert [line["step"] for line in lines] == [r["step"] for r in monitor.records] == list(range(16))


SIGTERM_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
import lightning.pytorch as pl
from bifurcation_callback import BifurcationMonitor
from tests.tiny_modules import SlowPLRNN, TinyRNNModule, quiet_trainer_kwargs, random_sequences

class Marker(pl.Callback):  # runs just before the monitor's hook, which then analyses for minutes
    def on_train_batch_end(self, *args):
        print("analysing", flush=True)

rnn = SlowPLRNN(2, delay_s=0.5, everywhere=True)  # a first search of minutes: 240 calls of 0.5 s
monitor = BifurcationMonitor(max_order=3, mode="sync", verbose=False, finder_kwargs=dict(exhaustive_limit=0))
trainer = pl.Trainer(max_steps=50, callbacks=[Marker(), monitor], **quiet_trainer_kwargs({tmp!r}, logger=False))
trainer.fit(TinyRNNModule(rnn), random_sequences())
print("finished", flush=True)
"""


def test_sigterm_interrupts_an_analysis_in_the_hook(tmp_path):
    # Lightning's SIGTERM handler only sets a flag that the fit loop reads between batches; the monitor asks it
    # between the search's batched calls, so a first search that would take minutes does not hold training up.
    import signal
    import subprocess
    import sys
    import time

    root = str(Path(__file__).resolve().parents[1])
    script = tmp_path / "train.py"
    script.write_text(SIGTERM_SCRIPT.format(root=root, tmp=str(tmp_path)))
    training = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert training.stdout.readline().strip() == "analysing"
        time.sleep(1.0)
        started = time.monotonic()
        training.send_signal(signal.SIGTERM)
        _, err = training.communicate(timeout=60)
    finally:
        training.kill()
    assert time.monotonic() - started < 30
    assert "finished" not in _ and "SIGTERM" in err


def test_gradient_norm():
    from bifurcation_callback._trainer import gradient_norm

    layer = torch.nn.Linear(2, 1)
    assert gradient_norm(layer.parameters()) is None
    layer.weight.grad = torch.tensor([[1.0, 2.0]])
    layer.bias.grad = torch.tensor([2.0])
    assert gradient_norm(layer.parameters()) == pytest.approx(3.0)
