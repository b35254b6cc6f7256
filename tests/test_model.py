"""LinearClassifier: the assignment's start, its objective and its refusals."""

from __future__ import annotations

import re

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import bare_trainer, two_vs_three

from mnist_linear.callbacks import TrainingProgressBar, ValidationLossEarlyStopping
from mnist_linear.data import MNISTSubsetDataModule
from mnist_linear.gradients import LinearCrossEntropy
from mnist_linear.model import LinearClassifier


def _numpy_cross_entropy_and_error(
    x: torch.Tensor, y: torch.Tensor, model: LinearClassifier
) -> tuple[np.ndarray, np.ndarray]:
    """Each image's cross-entropy and the error P - T, in numpy float64 by the formula.

    Binary (one logit): -[t log p + (1 - t) log(1 - p)] with p = 1 / (1 + e^-z) and
    1 - p = 1 / (1 + e^z); softmax: -sum_k T_k log P_k.
    """
    w, b = (p.detach().double().numpy() for p in (model.linear.weight, model.linear.bias))
    z, y = x.double().numpy() @ w.T + b, y.numpy()
    if z.shape[1] == 1:
        t = y[:, None].astype(np.float64)
        p, one_minus_p = 1 / (1 + np.exp(-z)), 1 / (1 + np.exp(z))
        return -(t * np.log(p) + (1 - t) * np.log(one_minus_p))[:, 0], p - t
    e = np.exp(z - z.max(axis=1, keepdims=True))
    probabilities, targets = e / e.sum(axis=1, keepdims=True), np.eye(z.shape[1])[y]
    return -(targets * np.log(probabilities)).sum(axis=1), probabilities - targets


def test_zero_weights_give_one_half_for_the_binary_model() -> None:
    model = LinearClassifier(num_classes=2, learning_rate=0.1)
    p = model(torch.rand(5, 784))
    assert p.shape == (5,)
    assert torch.equal(p, torch.full((5,), 0.5))


def test_zero_weights_give_one_tenth_per_class_for_softmax() -> None:
    model = LinearClassifier(num_classes=10, learning_rate=0.1)
    p = model(torch.rand(5, 784))
    assert p.shape == (5, 10)
    torch.testing.assert_close(p, torch.full((5, 10), 0.1), rtol=0, atol=1e-7)


def test_layer_shapes_follow_the_number_of_classes() -> None:
    assert LinearClassifier(2, 0.1).linear.weight.shape == (1, 784)
    assert LinearClassifier(10, 0.1).linear.weight.shape == (10, 784)
    assert LinearClassifier(3, 0.1).linear.bias.shape == (3,)


@pytest.mark.parametrize("num_classes", [2, 10])
def test_training_loss_is_mean_cross_entropy_plus_l2_through_the_custom_function(
    num_classes,
) -> None:
    torch.manual_seed(0)
    model = LinearClassifier(num_classes, learning_rate=0.1, l2_lambda=0.01)
    with torch.no_grad():
        model.linear.weight.normal_(0, 0.1)
        model.linear.bias.normal_(0, 0.1)
    x, y = torch.rand(40, 784), torch.randint(0, num_classes, (40,))
    loss = model.training_loss(x, y)
    assert type(loss.grad_fn).__name__ == f"{LinearCrossEntropy.__name__}Backward"
    ce, _ = _numpy_cross_entropy_and_error(x, y, model)
    expected = ce.mean() + 0.01 * (model.linear.weight.detach().double().numpy() ** 2).sum()
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)


def test_a_training_step_is_one_step_of_gradient_descent(mnist_root) -> None:
    dm = MNISTSubsetDataModule(data_dir=str(mnist_root), batch_size=40, shuffle=False)
    dm.setup()
    x, y = dm.train_set.tensors
    model = LinearClassifier(10, learning_rate=0.5, l2_lambda=0.01)
    with torch.no_grad():
        model.linear.weight.normal_(0, 0.01, generator=torch.Generator().manual_seed(0))
    w0, b0 = (p.detach().clone().requires_grad_() for p in model.linear.parameters())
    z = x[:40] @ w0.t() + b0
    reference = F.cross_entropy(z, y[:40]) + 0.01 * w0.pow(2).sum()
    grad_w, grad_b = torch.autograd.grad(reference, (w0, b0))
    trainer = bare_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 1
    torch.testing.assert_close(model.linear.weight, w0 - 0.5 * grad_w)
    torch.testing.assert_close(model.linear.bias, b0 - 0.5 * grad_b)


def test_the_progress_bar_shows_the_validation_loss_and_accuracy(
    mnist_root, capfd: pytest.CaptureFixture
) -> None:
    dm = two_vs_three(mnist_root)
    model = LinearClassifier(2, learning_rate=0.1)
    trainer = L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        max_epochs=1,
        limit_train_batches=2,
        callbacks=[TrainingProgressBar()],
    )
    trainer.fit(model, datamodule=dm)
    shown = re.findall(r"val/loss=([^,\]]+), val/acc=([^,\]]+)\]", capfd.readouterr().out)
    # The one evaluation, after the second block, measured the weights trained last.
    x, y = dm.val_set.tensors
    ce, error = _numpy_cross_entropy_and_error(x, y, model)
    accuracy = np.mean(np.abs(error[:, 0]) < 0.5)  # p on the right side of 1/2
    assert shown[-1] == (f"{ce.mean():.3g}", f"{accuracy:.3g}")  # tqdm's format for numbers


def test_a_nan_loss_goes_through_validation_and_stops_training(mnist_root) -> None:
    # torchmetrics' default would drop the NaN with a warning and log a finite loss.
    dm = two_vs_three(mnist_root)  # 4005 images: 100 steps of 40, in 10 blocks of 10
    dm.val_set.tensors[0][5, 300] = float("nan")  # one image of the validation split
    stopping = ValidationLossEarlyStopping()
    trainer = bare_trainer(max_epochs=5, val_check_interval=1, callbacks=[stopping])
    with pytest.warns(UserWarning, match="val/loss is nan at step 10"):
        trainer.fit(LinearClassifier(2, learning_rate=0.1), datamodule=dm)
    # Stopped at the first evaluation, after the first block: 10 steps of the epoch's 100.
    assert trainer.global_step == 10
    assert torch.isnan(trainer.callback_metrics["val/loss"])
    assert float(trainer.callback_metrics["train/loss"]) > 0  # the other splits stay finite
    assert stopping.best_epoch is None and "learning rate is too high" in stopping.stop_reason


@pytest.mark.parametrize("num_classes", [2, 10])
def test_bias_is_not_regularised(num_classes: int) -> None:
    # A bias of 1 to 3 per class: λ ||b||^2 would add at least 0.5 to the loss, and 2 λ b
    # at least 1 to its gradient.
    generator = torch.Generator().manual_seed(0)
    model = LinearClassifier(num_classes, learning_rate=0.1, l2_lambda=0.5)
    with torch.no_grad():
        model.linear.weight.normal_(0, 0.05, generator=generator)
        model.linear.bias.uniform_(1, 3, generator=generator)
    x = torch.rand(8, 784, generator=generator)
    y = torch.randint(0, num_classes, (8,), generator=generator)
    loss = model.training_loss(x, y)
    grad_w, grad_b = torch.autograd.grad(loss, (model.linear.weight, model.linear.bias))
    ce, error = _numpy_cross_entropy_and_error(x, y, model)
    w = model.linear.weight.detach().double().numpy()
    assert float(loss.detach()) == pytest.approx(ce.mean() + 0.5 * (w**2).sum(), rel=1e-6)
    np.testing.assert_allclose(grad_b.numpy(), error.mean(axis=0), rtol=1e-5, atol=1e-7)
    expected_w = error.T @ x.double().numpy() / len(x) + 2 * 0.5 * w
    np.testing.assert_allclose(grad_w.numpy(), expected_w, rtol=1e-5, atol=1e-7)


def test_binary_prediction_threshold_is_one_half() -> None:
    model = LinearClassifier(2, learning_rate=0.1)
    with torch.no_grad():
        model.linear.bias.fill_(0.0)
    assert model.predict(torch.zeros(3, 784)).tolist() == [1, 1, 1]
    with torch.no_grad():
        model.linear.bias.fill_(-1e-6)
    assert model.predict(torch.zeros(3, 784)).tolist() == [0, 0, 0]


def test_optimiser_is_sgd_with_the_configured_momentum() -> None:
    model = LinearClassifier(10, learning_rate=0.3, momentum=0.9, nesterov=True)
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.3, 0.9, True)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"learning_rate": 0.0}, r"learning_rate must be a finite number > 0, got 0.0"),
        ({"learning_rate": -1.0}, r"learning_rate must be a finite number > 0, got -1.0"),
        ({"learning_rate": float("nan")}, r"learning_rate must be a finite number > 0, got nan"),
        ({"learning_rate": float("inf")}, r"learning_rate must be a finite number > 0, got inf"),
        ({"l2_lambda": -0.1}, r"l2_lambda must be a finite number >= 0, got -0.1"),
        ({"l2_lambda": float("inf")}, r"l2_lambda must be a finite number >= 0, got inf"),
        ({"l2_lambda": float("-inf")}, r"l2_lambda must be a finite number >= 0, got -inf"),
        ({"l2_lambda": float("nan")}, r"l2_lambda must be a finite number >= 0, got nan"),
        ({"momentum": float("nan")}, r"momentum must be in \[0, 1\), got nan"),
        ({"num_classes": 1}, r"num_classes must be an integer from 2 to 10, got 1"),
        ({"num_classes": 11}, r"num_classes must be an integer from 2 to 10, got 11"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1.0"),
        ({"momentum": -0.5}, r"momentum must be in \[0, 1\), got -0.5"),
        ({"nesterov": True}, r"nesterov must be false when momentum is 0"),
    ],
)
def test_bad_values_are_refused(kwargs: dict, message: str) -> None:
    arguments = {"num_classes": 10, "learning_rate": 0.1, **kwargs}
    with pytest.raises(ValueError, match=message):
        LinearClassifier(**arguments)
