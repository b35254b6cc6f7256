"""The callbacks' rules: annealing, early stopping with restore, weight images, exact resume."""

from __future__ import annotations

import io
import math
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from conftest import (
    REPO,
    bare_trainer,
    events,
    read_results,
    run_dir,
    stopping_state,
    train_here,
    two_vs_three,
)
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from mnist_linear.callbacks import (
    LearningRateAnnealing,
    ValidationLossEarlyStopping,
    WeightImageLogger,
    tile_grid,
    weight_tiles,
)
from mnist_linear.model import LinearClassifier

# A small real task on which early stopping fires within 15 epochs of 9 steps.
EARLY_STOP_ARGS = (
    f"--config={REPO / 'configs' / 'logistic.yaml'}",
    "--data.train_size=2000",
    "--model.learning_rate=1.0",
)


def _trainer(**overrides) -> SimpleNamespace:
    strategy = SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision)
    fields = dict(
        sanity_checking=False,
        state=SimpleNamespace(fn="fit"),
        callback_metrics={},
        current_epoch=0,
        global_step=0,
        should_stop=False,
        strategy=strategy,
        optimizers=[],
        checkpoint_callback=None,
        progress_bar_callback=None,
        fast_dev_run=False,
        max_epochs=None,
        max_steps=-1,
        callbacks=[],
    )
    return SimpleNamespace(**{**fields, **overrides})


# --- LearningRateAnnealing ------------------------------------------------------------------


@pytest.mark.parametrize(
    "step, expected", [(0, 0.5), (1, 0.5 / 1.001), (1000, 0.25), (3000, 0.125)]
)
def test_annealed_rate_is_lr0_over_one_plus_t_over_T(step: int, expected: float) -> None:
    assert LearningRateAnnealing(T=1000).rate(0.5, step) == pytest.approx(expected, rel=1e-15)


def test_annealing_sets_every_group_before_each_step_from_global_step() -> None:
    model = LinearClassifier(10, learning_rate=0.4)
    optimizer = model.configure_optimizers()
    callback = LearningRateAnnealing(T=10)
    module = SimpleNamespace(log=lambda *args, **kwargs: None)
    for step in (0, 5, 10, 30):
        callback.on_before_optimizer_step(_trainer(global_step=step), module, optimizer)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.4 / (1 + step / 10))
        assert optimizer.param_groups[0]["initial_lr"] == 0.4


def test_null_T_keeps_the_rate_constant() -> None:
    callback = LearningRateAnnealing(T=None)
    assert [callback.rate(0.3, t) for t in (0, 10, 10**6)] == [0.3, 0.3, 0.3]


@pytest.mark.parametrize("T", [0, -1.0, float("nan"), float("inf"), float("-inf")])
def test_bad_T_is_refused(T: float) -> None:
    with pytest.raises(ValueError, match="T must be a finite number > 0, or null"):
        LearningRateAnnealing(T=T)


@pytest.mark.slow
def test_logged_rate_follows_the_formula_in_a_real_run(logistic_run: Path) -> None:
    logged = events(run_dir(logistic_run)).Scalars("lr")
    # At every evaluation: 3 epochs of 100 steps, 10 evaluations each.
    assert [event.step for event in logged] == list(range(10, 301, 10))
    for event in logged:
        # Logged after S steps: the rate of the last of them, step t = S - 1.
        assert event.value == pytest.approx(0.2 / (1 + (event.step - 1) / 1000), rel=1e-6)


# --- ValidationLossEarlyStopping: the rule on synthetic sequences ----------------------------


def _feed(
    values: list[float], patience: int = 3, rule: str = "rises"
) -> tuple[ValidationLossEarlyStopping, int | None]:
    """Epoch-end values in order; returns the callback and the epoch at which it stopped."""
    callback = ValidationLossEarlyStopping(patience=patience, rule=rule)
    model = LinearClassifier(2, learning_rate=0.1)
    trainer = _trainer()
    for epoch, value in enumerate(values):
        trainer.current_epoch = epoch
        trainer.callback_metrics = {"val/loss": torch.tensor(value)}
        callback.on_validation_end(trainer, model)
        callback.on_train_epoch_end(trainer, model)
        if trainer.should_stop:
            return callback, epoch
    return callback, None


def test_stops_exactly_at_the_third_consecutive_rise() -> None:
    _, stopped = _feed([5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 3.8])
    assert stopped == 5
    _, stopped = _feed([5.0, 4.0, 3.0, 3.5, 3.6])
    assert stopped is None


def test_equal_values_are_not_rises() -> None:
    _, stopped = _feed([3.0, 3.0, 3.5, 3.6, 3.6, 3.7, 3.8])
    assert stopped is None
    _, stopped = _feed([3.0, 3.0, 3.5, 3.6, 3.6, 3.7, 3.8, 3.9])
    assert stopped == 7


def test_a_fall_resets_the_count() -> None:
    _, stopped = _feed([3.0, 3.1, 3.2, 3.1, 3.2, 3.3, 3.0])
    assert stopped is None


@pytest.mark.parametrize("patience, expected", [(1, 2), (2, 3), (4, 5)])
def test_patience_sets_the_number_of_rises(patience: int, expected: int) -> None:
    _, stopped = _feed([2.0, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5], patience=patience)
    assert stopped == expected


@pytest.mark.parametrize(
    "values, patience, expected",
    [
        ([3.0, 2.0, 2.5, 2.4, 2.3], 3, 4),  # no new best for three epochs, though falling
        ([3.0, 2.0, 2.5, 2.4, 1.9, 2.0], 3, None),
        ([3.0, 3.0, 3.0], 2, 2),  # an equal value is no improvement
    ],
)
def test_no_improvement_rule_counts_epochs_since_the_best(
    values: list[float], patience: int, expected: int | None
) -> None:
    _, stopped = _feed(values, patience=patience, rule="no_improvement")
    assert stopped == expected


def test_rises_rule_does_not_stop_on_a_slow_decline_after_a_jump() -> None:
    # Falling again after one rise: Lightning's rule would stop, the assignment's does not.
    _, stopped = _feed([3.0, 2.0, 2.5, 2.4, 2.3, 2.2, 2.1])
    assert stopped is None


def test_bad_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="rule must be 'rises' or 'no_improvement', got 'x'"):
        ValidationLossEarlyStopping(rule="x")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_stops_at_once_even_mid_epoch(bad: float) -> None:
    # At the evaluation itself, before any on_train_epoch_end.
    callback = ValidationLossEarlyStopping()
    trainer = _trainer(callback_metrics={"val/loss": torch.tensor(bad)})
    with pytest.warns(UserWarning, match="the learning rate is too high"):
        callback.on_validation_end(trainer, LinearClassifier(2, learning_rate=0.1))
    assert trainer.should_stop
    assert "learning rate is too high" in callback.stop_reason


def test_a_nan_stop_mid_epoch_keeps_its_reason_and_adds_no_value() -> None:
    callback = ValidationLossEarlyStopping(patience=1)
    model = LinearClassifier(2, learning_rate=0.1)
    trainer = _trainer(callback_metrics={"val/loss": torch.tensor(0.5)})
    callback.on_validation_end(trainer, model)
    callback.on_train_epoch_end(trainer, model)
    trainer.current_epoch = 1
    for value in (0.6, math.nan, 0.7):  # a rise, then NaN mid-epoch, then one more evaluation
        trainer.callback_metrics = {"val/loss": torch.tensor(value)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the NaN's own warning
            callback.on_validation_end(trainer, model)
    callback.on_train_epoch_end(trainer, model)
    callback.finish(trainer, model)
    assert callback.history == [0.5]  # epoch 1's value was its NaN, which stopped training
    assert callback.stopped_epoch == 1
    assert callback.stop_reason == "val/loss is nan at step 0: the learning rate is too high"


def test_the_stop_is_in_the_last_epoch_trained_not_the_last_evaluated() -> None:
    callback = ValidationLossEarlyStopping()
    model = LinearClassifier(2, learning_rate=0.1)
    trainer = _trainer(callback_metrics={"val/loss": torch.tensor(0.5)})
    for epoch in range(3):  # evaluated in epoch 1 only (check_val_every_n_epoch=2)
        trainer.current_epoch = epoch
        callback.on_train_epoch_start(trainer, model)
        if epoch == 1:
            callback.on_validation_end(trainer, model)
        callback.on_train_epoch_end(trainer, model)
    callback.on_train_end(trainer, model)
    assert (callback.best_epoch, callback.stopped_epoch) == (1, 2)
    restored = ValidationLossEarlyStopping()
    restored.load_state_dict(callback.state_dict())
    restored.stopped_epoch = None  # as in a checkpoint saved before training ended
    restored.finish(trainer, model)
    assert restored.stopped_epoch == 2


def test_the_epochs_last_evaluation_counts_with_the_weights_it_measured() -> None:
    callback = ValidationLossEarlyStopping()
    model = LinearClassifier(2, learning_rate=0.1)
    trainer = _trainer(callback_metrics={"val/loss": torch.tensor(0.1)}, global_step=9)
    callback.on_validation_end(trainer, model)
    assert callback.history == []
    with torch.no_grad():
        model.linear.weight.fill_(1.0)
    trainer.global_step, trainer.callback_metrics = 18, {"val/loss": torch.tensor(0.7)}
    callback.on_validation_end(trainer, model)
    with torch.no_grad():
        model.linear.weight.fill_(2.0)  # the steps after the epoch's last evaluation
    trainer.global_step = 20
    callback.on_train_epoch_end(trainer, model)
    assert callback.history == [pytest.approx(0.7)]
    assert (callback.best_epoch, callback.best_step) == (0, 18)
    assert torch.equal(callback.best_state["linear.weight"], torch.ones(1, 784))
    callback.on_train_end(trainer, model)
    assert torch.equal(model.linear.weight, torch.ones(1, 784))


def test_an_epoch_without_an_evaluation_adds_no_value() -> None:
    callback = ValidationLossEarlyStopping()
    model = LinearClassifier(2, learning_rate=0.1)
    trainer = _trainer(callback_metrics={"val/loss": torch.tensor(0.5)})
    callback.on_validation_end(trainer, model)
    callback.on_train_epoch_end(trainer, model)
    trainer.current_epoch = 1
    callback.on_train_epoch_end(trainer, model)
    assert callback.history == [0.5] and callback.last_epoch == 0


def test_best_weights_are_a_copy_not_a_reference() -> None:
    callback = ValidationLossEarlyStopping()
    model = LinearClassifier(2, learning_rate=0.1)
    trainer = _trainer(callback_metrics={"val/loss": torch.tensor(0.5)})
    with torch.no_grad():
        model.linear.weight.fill_(1.0)
    callback.on_validation_end(trainer, model)
    callback.on_train_epoch_end(trainer, model)
    with torch.no_grad():
        model.linear.weight.fill_(2.0)  # later training changes the live weights in place
    trainer.current_epoch, trainer.callback_metrics = 1, {"val/loss": torch.tensor(0.6)}
    callback.on_validation_end(trainer, model)
    callback.on_train_epoch_end(trainer, model)
    callback.on_train_end(trainer, model)
    assert callback.best_epoch == 0
    assert torch.equal(model.linear.weight, torch.ones(1, 784))


def test_state_round_trips_through_state_dict() -> None:
    callback, _ = _feed([5.0, 4.0, 4.5])
    restored = ValidationLossEarlyStopping()
    restored.load_state_dict(callback.state_dict())
    assert restored.history == callback.history
    assert (restored.best_epoch, restored.best_loss) == (1, 4.0)
    assert all(torch.equal(restored.best_state[k], v) for k, v in callback.best_state.items())


def test_bad_patience_is_refused() -> None:
    with pytest.raises(ValueError, match="patience must be an integer >= 1, got 0"):
        ValidationLossEarlyStopping(patience=0)


# --- Early stopping and resume in real runs -------------------------------------------------


@pytest.fixture(scope="module")
def early_stopped_run(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    root = tmp_path_factory.mktemp("early")
    assert train_here(*EARLY_STOP_ARGS, root=root, mnist=mnist_root) == 0
    return root


@pytest.mark.slow
def test_real_run_stops_early_and_restores_the_best_not_the_last_weights(
    early_stopped_run: Path, mnist_root: Path
) -> None:
    results = read_results(early_stopped_run)
    checkpoint = torch.load(
        run_dir(early_stopped_run) / "checkpoints" / "last.ckpt", weights_only=True
    )
    state = stopping_state(checkpoint)
    history = state["history"]
    assert "rose 3 epochs in a row" in results["stop_reason"]
    assert results["stopped_epoch"] == len(history) - 1 < 99
    assert history[-4] < history[-3] < history[-2] < history[-1]
    assert results["best_epoch"] == history.index(min(history)) < results["stopped_epoch"]
    best, last = state["best_state"], checkpoint["state_dict"]
    assert not torch.equal(best["linear.weight"], last["linear.weight"])
    x, y = two_vs_three(mnist_root, train_size=2000).val_set.tensors
    for weights, expected_equal in ((best, True), (last, False)):
        model = LinearClassifier(2, learning_rate=1.0)
        model.load_state_dict({k: v for k, v in weights.items() if k.startswith("linear.")})
        loss = torch.nn.functional.binary_cross_entropy(model(x), y.float()).item()
        assert (loss == pytest.approx(results["val/loss"], rel=1e-5)) is expected_equal


@pytest.mark.slow
def test_resuming_a_run_that_stopped_early_stays_stopped(
    early_stopped_run: Path, mnist_root: Path, tmp_path: Path
) -> None:
    # A checkpoint outside its run folder resumes into a new folder under the root.
    last = tmp_path / "copied.ckpt"
    shutil.copy(run_dir(early_stopped_run) / "checkpoints" / "last.ckpt", last)
    root = tmp_path / "root"
    assert train_here(*EARLY_STOP_ARGS, f"--ckpt_path={last}", root=root, mnist=mnist_root) == 0
    results, expected = read_results(root), read_results(early_stopped_run)
    assert results["global_step"] == expected["global_step"]
    assert results["val/loss"] == expected["val/loss"]


# --- WeightImageLogger --------------------------------------------------------------------


def test_weight_grid_has_28_by_28_tiles_each_scaled_to_unit_range() -> None:
    weight = torch.randn(10, 784) * torch.arange(1, 11)[:, None]
    tiles = weight_tiles(weight)
    assert tiles.shape == (10, 1, 28, 28)
    assert torch.equal(tiles[3, 0], weight[3].reshape(28, 28))
    grid = tile_grid(tiles, nrow=10, padding=2)
    assert grid.shape == (3, 32, 10 * 30 + 2)
    for k in range(10):
        tile = grid[0, 2:30, 2 + 30 * k : 30 + 30 * k]
        expected = (tiles[k, 0] - tiles[k].min()) / (tiles[k].max() - tiles[k].min())
        torch.testing.assert_close(tile, expected)
    assert torch.equal(tile_grid(torch.zeros(1, 1, 28, 28), 1, 0), torch.zeros(3, 28, 28))


def _images(folder: Path, tag: str) -> list[torch.Tensor]:
    decoded = [Image.open(io.BytesIO(e.encoded_image_string)) for e in events(folder).Images(tag)]
    return [torch.from_numpy(np.array(image.convert("L"))) for image in decoded]


@pytest.mark.slow
def test_images_of_a_real_run(logistic_run: Path) -> None:
    folder = run_dir(logistic_run)
    weights = _images(folder, "weights")
    assert len(weights) == 3  # every epoch end
    (restored,) = _images(folder, "restored_weights")
    weights.append(restored)
    assert all(
        image.shape[-2:] == (28, 28) and image.max() == 255 and image.min() == 0
        for image in weights
    )
    (means,) = _images(folder, "class_means")
    assert means.shape[-2:] == (28 + 2 * 2, 2 * 28 + 3 * 2)
    (figure,) = _images(folder, "weights_vs_means")
    assert figure.shape[-2:] == (2 * 28 + 3 * 2, 2 * 28 + 3 * 2)


@pytest.mark.slow
def test_restored_weights_and_the_assignment_figure_show_the_restored_weights(
    logistic_run: Path,
) -> None:
    folder = run_dir(logistic_run)
    weight = stopping_state(folder / "checkpoints" / "last.ckpt")["best_state"]["linear.weight"]

    def as_png(grid: torch.Tensor) -> torch.Tensor:  # what SummaryWriter.add_image stores
        return (grid[0] * 255).clamp(0, 255).to(torch.uint8)

    (restored,) = _images(folder, "restored_weights")
    assert torch.equal(restored, as_png(tile_grid(weight_tiles(weight), 1)))
    (figure,) = _images(folder, "weights_vs_means")
    means = _images(folder, "class_means")[0]
    assert torch.equal(figure[: means.shape[0] - 2], means[:-2])  # the means on top
    assert torch.equal(figure[-30:-2, 2:30], restored)  # the restored weights below


def _fit(callback: L.Callback, mnist_root: Path, tmp_path: Path, **kwargs: object) -> L.Trainer:
    trainer = bare_trainer(default_root_dir=tmp_path, max_steps=20, callbacks=[callback], **kwargs)
    datamodule = two_vs_three(mnist_root, train_size=2000)
    trainer.fit(LinearClassifier(2, learning_rate=0.5), datamodule=datamodule)
    return trainer


def test_weight_images_write_nothing_without_tensorboard(mnist_root: Path, tmp_path: Path) -> None:
    # Another logger is there, with a folder of its own; 20 steps cross two epoch ends (9 each).
    trainer = _fit(WeightImageLogger(), mnist_root, tmp_path, logger=CSVLogger(tmp_path))
    assert trainer.global_step == 20
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["lightning_logs/version_0/hparams.yaml",
                       "lightning_logs/version_0/metrics.csv"]  # fmt: skip


def test_progress_bar_draws_no_bar_per_evaluation_while_fitting(
    mnist_root: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    from mnist_linear.callbacks import TrainingProgressBar

    trainer = _fit(TrainingProgressBar(refresh_rate=1), mnist_root, tmp_path,
                   enable_progress_bar=True, val_check_interval=0.5)  # fmt: skip
    output = "".join(capfd.readouterr())
    assert "Epoch 0" in output and "val/acc=" in output
    assert "Validation DataLoader" not in output
    trainer.validate(trainer.lightning_module, datamodule=trainer.datamodule)
    assert "Validation DataLoader" in "".join(capfd.readouterr())  # validate keeps its bar
    with pytest.raises(ValueError, match="refresh_rate must be an integer >= 0, got -1"):
        TrainingProgressBar(refresh_rate=-1)
