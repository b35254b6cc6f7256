"""LinearClassifier: logistic or softmax regression trained through the hand-derived gradient."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric

from mnist_linear.errors import (
    FiniteNonNegativeFloat,
    FinitePositiveFloat,
    Momentum,
    check_float,
    check_int,
)
from mnist_linear.gradients import (
    autocast_off,
    cross_entropy,
    linear_cross_entropy,
    logits,
    probabilities,
)
from mnist_linear.splits import NUM_FEATURES

STAGES = ("train", "val", "test")


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch's CPU operations on one thread inside, on the previous number after.

    A mini-batch's products (40 x 784 by 784 x K) are too small to gain from threads,
    and split across them their sums run in another order: on one thread, the weights a
    run trains are the same bits whatever the process's thread count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class LinearClassifier(L.LightningModule):
    """One linear layer, 784 -> 1 (logistic, ``num_classes=2``) or 784 -> K (softmax).

    The layer starts at zero, as in the assignment: p = 0.5 for every image, or 1/K
    for every class. The training loss is the mean cross-entropy plus
    ``l2_lambda * ||W||^2`` (the bias is not regularised); its gradient is the
    hand-derived one of :class:`~mnist_linear.gradients.LinearCrossEntropy`.
    Evaluation reports the cross-entropy without the L2 term and the accuracy on the
    three splits that the data module's ``val_dataloader`` serves, in the order
    training, validation, test, as ``train/loss`` ... ``test/acc``.

    Args:
        num_classes: 2 for logistic regression, 3 to 10 for softmax regression.
        learning_rate: SGD step size for the mean-over-the-batch gradient, finite and > 0.
        l2_lambda: Strength λ of the penalty λ ||W||^2, finite and at least 0.
        momentum: SGD momentum, in [0, 1).
        nesterov: Use Nesterov momentum (needs momentum > 0).
    """

    def __init__(
        self,
        num_classes: int,
        learning_rate: FinitePositiveFloat,
        l2_lambda: FiniteNonNegativeFloat = 0.0,
        momentum: Momentum = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__()
        check_int("num_classes", num_classes, 2, 10)
        check_float("learning_rate", learning_rate, 0, inclusive=False)
        check_float("l2_lambda", l2_lambda, 0)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if nesterov and momentum == 0:
            raise ValueError(
                f"nesterov must be false when momentum is 0, got nesterov={nesterov!r}"
            )
        self.save_hyperparameters()
        # training_step takes the gradient-descent step itself. Automatic optimisation
        # runs the same zero_grad, backward and step inside a closure, with one more
        # round of hooks, and made this small model's step 12% slower. The Trainer's
        # gradient clipping and accumulation are not part of the algorithm and do not
        # apply; train.py refuses them.
        self.automatic_optimization = False
        self.linear = nn.Linear(NUM_FEATURES, 1 if num_classes == 2 else num_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        # One metric of each kind per split, indexed like STAGES and the validation loaders.
        # Accuracy is the mean of each image's 0/1 correctness: the number torchmetrics'
        # micro Accuracy gives, at an eighth of its cost on the 20,000 training images.
        # nan_strategy="disable" keeps a NaN loss NaN, so that early stopping sees a run
        # that diverged; the default would drop those images with a warning.
        self.losses = nn.ModuleList([MeanMetric(nan_strategy="disable") for _ in STAGES])
        self.accuracies = nn.ModuleList([MeanMetric(nan_strategy="disable") for _ in STAGES])

    @property
    def binary(self) -> bool:
        return self.hparams.num_classes == 2

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return logits(x, self.linear.weight, self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities: p(class 1) of shape (N,) when binary, else softmax of shape (N, K)."""
        return probabilities(self.logits(x))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Labels: 1 where p >= 0.5 (z >= 0) when binary, else the most probable class."""
        return self._labels(self.logits(x))

    def _labels(self, z: torch.Tensor) -> torch.Tensor:
        return (z[:, 0] >= 0).long() if self.binary else z.argmax(dim=1)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy plus λ ||W||^2, whose backward is the hand-derived gradient."""
        return linear_cross_entropy(
            x, y, self.linear.weight, self.linear.bias, self.hparams.l2_lambda
        )

    def training_step(
        self, block: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        """The block's steps of mini-batch gradient descent, in order; the last step's loss.

        ``block`` is ``(x, y)`` of shapes (steps, batch_size, 784) and (steps, batch_size):
        one evaluation interval. Each step is ``zero_grad``, the loss, ``manual_backward``
        (which keeps DDP's gradient averaging) and ``optimizer.step()``, so
        ``global_step`` counts SGD steps. The steps stop at ``max_steps``, even mid-block.
        """
        optimizer = self.optimizers()
        max_steps = self.trainer.max_steps
        loss = torch.zeros(())
        with one_thread():
            for x, y in zip(*block, strict=True):
                if 0 <= max_steps <= self.trainer.global_step:
                    break
                optimizer.zero_grad()
                loss = self.training_loss(x, y)
                self.manual_backward(loss)  # LinearCrossEntropy.backward: the hand-derived gradient
                optimizer.step()
        return loss.detach()

    @property
    def eval_dtype(self) -> torch.dtype:
        """The dtype of evaluations: float32, or float64 for float64 weights (``64-true``)."""
        return torch.promote_types(self.linear.weight.dtype, torch.float32)

    def _per_image(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's cross-entropy (no L2 term) and 0/1 correctness, in :attr:`eval_dtype`.

        Autocast is off and half-precision weights are widened, so that the logged
        evaluations, which early stopping compares, and :meth:`measure` compute the same
        numbers under every precision setting, never in half precision.
        """
        weight, bias, dtype = self.linear.weight, self.linear.bias, self.eval_dtype
        device_type = weight.device.type
        with autocast_off(device_type, torch.is_autocast_enabled(device_type)):
            z = logits(x.to(dtype), weight.to(dtype), bias.to(dtype))
            return cross_entropy(z, y), (self._labels(z) == y).to(dtype)

    def _metrics_in_eval_dtype(self) -> None:
        # torchmetrics keeps its states float32 through Lightning's module.double(); under
        # 64-true the means are then sums of float64 values, as measure() takes them.
        for metric in (*self.losses, *self.accuracies):
            metric.set_dtype(self.eval_dtype)

    def on_validation_start(self) -> None:
        self._metrics_in_eval_dtype()

    def on_test_start(self) -> None:
        self._metrics_in_eval_dtype()

    @torch.no_grad()
    def measure(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
        """Mean cross-entropy (no L2 term) and accuracy over ``batches``, in this process alone.

        The same arithmetic as an evaluation's logged ``loss`` and ``acc``, in
        :attr:`eval_dtype` with autocast off, so that the same batches give the same
        numbers to the last bit.
        """
        loss, accuracy = (
            MeanMetric(nan_strategy="disable", sync_on_compute=False)
            .to(self.device)
            .set_dtype(self.eval_dtype)
            for _ in range(2)
        )
        for x, y in batches:
            values, correct = self._per_image(x.to(self.device), y.to(self.device))
            loss.update(values)
            accuracy.update(correct)
        return float(loss.compute()), float(accuracy.compute())

    def validation_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        stage = STAGES[dataloader_idx]
        values, correct = self._per_image(*batch)
        self.losses[dataloader_idx].update(values)
        self.accuracies[dataloader_idx].update(correct)
        on_bar = stage == "val"  # the progress bar shows the validation numbers
        for name, metric in (
            ("loss", self.losses[dataloader_idx]),
            ("acc", self.accuracies[dataloader_idx]),
        ):
            self.log(f"{stage}/{name}", metric, prog_bar=on_bar, add_dataloader_idx=False)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx, dataloader_idx=STAGES.index("test"))

    def on_validation_epoch_end(self) -> None:
        self.log("weight_norm", self.linear.weight.detach().norm(), sync_dist=True)
        if self.trainer.state.fn == "fit":
            # A logged "step" is not a tag: Lightning takes it as the x-axis value of this
            # evaluation's scalars, so TensorBoard plots them against SGD steps, not blocks
            # (and, given a step, adds no "epoch" tag).
            self.log("step", float(self.trainer.global_step), sync_dist=True)  # equal on all

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            self.parameters(),
            lr=self.hparams.learning_rate,
            momentum=self.hparams.momentum,
            nesterov=self.hparams.nesterov,
        )
