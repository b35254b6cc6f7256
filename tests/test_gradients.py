"""The hand-derived backward pass is the gradient of the loss the forward pass computes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import two_vs_three

from mnist_linear.data import MNISTSubsetDataModule
from mnist_linear.gradients import (
    LinearCrossEntropy,
    cross_entropy,
    cross_entropy_terms,
    linear_cross_entropy,
    logits,
    probabilities,
)

LAMBDAS = [0.0, 0.01]
MODELS = ["logistic", "softmax"]


@pytest.fixture(scope="module")
def images(mnist_root: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """100 real training images of each task, in float64."""
    softmax = MNISTSubsetDataModule(data_dir=str(mnist_root))
    softmax.setup()
    out = {}
    for name, dm in (("logistic", two_vs_three(mnist_root)), ("softmax", softmax)):
        x, y = dm.train_set.tensors
        out[name] = (x[:100].double(), y[:100])
    return out


def _parameters(
    model: str, scale: float = 0.01, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    k = 1 if model == "logistic" else 10
    g = torch.Generator().manual_seed(seed)
    weight = (scale * torch.randn(k, 784, generator=g, dtype=torch.float64)).requires_grad_()
    bias = (scale * torch.randn(k, generator=g, dtype=torch.float64)).requires_grad_()
    return weight, bias


def _numpy_cross_entropy(z: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of logits (N, 1) or (N, K), in float64 by the formula.

    Binary: -[t log p + (1 - t) log(1 - p)], p = 1 / (1 + e^-z), with 1 - p taken as
    1 / (1 + e^z), the same number without the cancellation. Softmax: -log P_y.
    """
    if z.shape[1] == 1:
        z, t = z[:, 0], y.astype(np.float64)
        p, one_minus_p = 1 / (1 + np.exp(-z)), 1 / (1 + np.exp(z))
        return float(np.mean(-(t * np.log(p) + (1 - t) * np.log(one_minus_p))))
    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(np.mean(-log_p[np.arange(len(y)), y]))


def _numpy_loss(x, y, weight, bias, lam: float) -> float:
    """The training objective, mean cross-entropy + λ ||W||^2, in numpy float64."""
    x, w, b = (t.detach().double().numpy() for t in (x, weight, bias))
    return _numpy_cross_entropy(x @ w.T + b, y.numpy()) + lam * float((w**2).sum())


def _reference_loss(x, y, weight, bias, lam):
    """The same objective by the formula, in torch operations that autograd differentiates."""
    z = x @ weight.t() + bias
    if weight.shape[0] == 1:
        p, t = torch.sigmoid(z[:, 0]), y.to(z.dtype)
        ce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
    else:
        ce = -torch.log(torch.softmax(z, dim=1)[torch.arange(len(y)), y]).mean()
    return ce + lam * (weight**2).sum()


@pytest.mark.parametrize("lam", LAMBDAS)
@pytest.mark.parametrize("model", MODELS)
def test_backward_passes_gradcheck(images, model: str, lam: float) -> None:
    x, y = images[model]
    x = x[:8].clone().requires_grad_()
    weight, bias = _parameters(model)
    assert torch.autograd.gradcheck(
        lambda x_, w, b: LinearCrossEntropy.apply(x_, y[:8], w, b, lam),
        (x, weight, bias),
        fast_mode=True,
    )


@pytest.mark.parametrize("lam", LAMBDAS)
@pytest.mark.parametrize("model", MODELS)
def test_gradient_matches_autograd_reference(images, model: str, lam: float) -> None:
    x, y = images[model]
    weight, bias = _parameters(model)
    loss = linear_cross_entropy(x, y, weight, bias, lam)
    assert float(loss.detach()) == pytest.approx(_numpy_loss(x, y, weight, bias, lam), rel=1e-12)
    reference = _reference_loss(x, y, weight, bias, lam)
    ours = torch.autograd.grad(loss, (weight, bias))
    theirs = torch.autograd.grad(reference, (weight, bias))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("lam", LAMBDAS)
@pytest.mark.parametrize("model", MODELS)
def test_gradient_matches_central_differences(images, model: str, lam: float) -> None:
    x, y = images[model]
    weight, bias = _parameters(model)
    loss = linear_cross_entropy(x, y, weight, bias, lam)
    grad_w, grad_b = torch.autograd.grad(loss, (weight, bias))
    eps = 1e-3

    def loss_at(w: torch.Tensor, b: torch.Tensor) -> float:
        return float(linear_cross_entropy(x, y, w, b, lam))

    w, b = weight.detach(), bias.detach()
    rows = range(w.shape[0])
    # Eight pixels lit in the batch, spread from its first to its last (the border pixels,
    # dark in every image, would give 0 = 0 at λ = 0).
    lit = (x != 0).any(dim=0).nonzero()[:, 0]
    pixels = lit[torch.linspace(0, len(lit) - 1, 8).round().long()].tolist()
    assert (grad_w[:, pixels] != 0).all()
    for k in rows:
        for j in pixels:
            step = torch.zeros_like(w)
            step[k, j] = eps
            numeric = (loss_at(w + step, b) - loss_at(w - step, b)) / (2 * eps)
            assert abs(numeric - float(grad_w[k, j])) < 1e-6
        step = torch.zeros_like(b)
        step[k] = eps
        numeric = (loss_at(w, b + step) - loss_at(w, b - step)) / (2 * eps)
        assert abs(numeric - float(grad_b[k])) < 1e-6


@pytest.mark.parametrize("model", MODELS)
def test_gradient_is_of_the_mean_loss_not_the_sum(images, model: str) -> None:
    x, y = images[model]
    weight, bias = _parameters(model)
    half = torch.autograd.grad(linear_cross_entropy(x[:50], y[:50], weight, bias), weight)[0]
    other = torch.autograd.grad(linear_cross_entropy(x[50:], y[50:], weight, bias), weight)[0]
    whole = torch.autograd.grad(linear_cross_entropy(x, y, weight, bias), weight)[0]
    torch.testing.assert_close(whole, (half + other) / 2)


def _huge_logits(model: str, magnitude: float, dtype: torch.dtype):
    """Four one-pixel images whose logits are ±magnitude; see the test for the values."""
    k = 1 if model == "logistic" else 10
    x = torch.eye(784, dtype=dtype)[:4]
    y = torch.tensor([0, 1, 1, 0])
    weight = torch.zeros(k, 784, dtype=dtype)
    weight[:, :4] = magnitude * torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=dtype)
    weight[1:] *= -1  # softmax: class 0 against the nine others
    return x, y, weight.requires_grad_(), torch.zeros(k, dtype=dtype, requires_grad=True)


def _loss_and_gradients(x, y, weight, bias, lam: float) -> list[torch.Tensor]:
    loss = linear_cross_entropy(x, y, weight, bias, lam)
    return [loss.detach(), *torch.autograd.grad(loss, (weight, bias))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("magnitude", [1e2, 1e3, 1e4])
@pytest.mark.parametrize("model", MODELS)
def test_huge_logits_give_the_exact_cross_entropy_and_its_gradient(
    model: str, magnitude: float, dtype: torch.dtype
) -> None:
    # Images e_0..e_3 with logits m * [1, -1, 1, -1] (softmax: class 0's; the nine others'
    # are their negatives) and labels [0, 1, 1, 0]. By hand, to far below float precision:
    # binary, the losses are m, m, 0, 0 and P - T = [1, -1, 0, 0];
    # softmax, 0, log 9, 2m, 2m + log 9, and P - T has rows 0, (0, -8/9, 1/9 ...),
    # (1, -1, 0 ...), (-1, 1/9, 1/9 ...).
    x, y, weight, bias = _huge_logits(model, magnitude, dtype)
    if model == "logistic":
        ce, error = magnitude / 2, torch.tensor([[1.0], [-1.0], [0.0], [0.0]])
    else:
        ce, error = magnitude + math.log(9) / 2, torch.zeros(4, 10)
        error[1], error[3] = 1 / 9, 1 / 9
        error[1, 0], error[1, 1], error[2, 0], error[2, 1], error[3, 0] = 0, -8 / 9, 1, -1, -1
    expected_w = torch.zeros_like(weight)
    expected_w[:, :4] = error.t().to(dtype) / 4  # (P - T)^T X / N
    loss, grad_w, grad_b = _loss_and_gradients(x, y, weight, bias, 0.0)
    assert float(loss) == pytest.approx(ce, rel=1e-6)
    torch.testing.assert_close(grad_w, expected_w, rtol=1e-6, atol=1e-30)
    torch.testing.assert_close(grad_b, error.sum(0).to(dtype) / 4, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("magnitude", [1e2, 1e3, 1e4])
@pytest.mark.parametrize("model", MODELS)
def test_l2_term_at_huge_weights_is_finite_and_exactly_lambda_w_squared(
    model: str, magnitude: float, dtype: torch.dtype
) -> None:
    x, y, weight, bias = _huge_logits(model, magnitude, dtype)
    without = _loss_and_gradients(x, y, weight, bias, 0.0)
    loss, grad_w, grad_b = with_l2 = _loss_and_gradients(x, y, weight, bias, 0.1)
    assert all(torch.isfinite(t).all() for t in with_l2)
    squares = 4 * magnitude**2 * weight.shape[0]  # ||W||^2: four entries of ±m per row
    assert float(loss - without[0]) == pytest.approx(0.1 * squares, rel=1e-6)
    torch.testing.assert_close(grad_w - without[1], 2 * 0.1 * weight.detach())
    assert torch.equal(grad_b, without[2])  # the bias is not regularised


def test_custom_function_is_the_node_autograd_calls(images) -> None:
    x, y = images["softmax"]
    weight, bias = _parameters("softmax")
    loss = linear_cross_entropy(x, y, weight, bias, 0.0)
    assert type(loss.grad_fn).__name__ == "LinearCrossEntropyBackward"
    calls = []
    original = LinearCrossEntropy.backward

    def spy(ctx, grad_output):
        calls.append(grad_output)
        return original(ctx, grad_output)

    try:
        LinearCrossEntropy.backward = staticmethod(spy)
        loss = linear_cross_entropy(x, y, weight, bias, 0.0)
        (3.0 * loss).backward()
    finally:
        LinearCrossEntropy.backward = staticmethod(original)
    assert len(calls) == 1 and float(calls[0]) == 3.0
    reference = torch.autograd.grad(3.0 * _reference_loss(x, y, weight, bias, 0.0), weight)[0]
    torch.testing.assert_close(weight.grad, reference)


@pytest.mark.parametrize("model", MODELS)
def test_evaluation_loss_is_the_cross_entropy_without_l2(images, model: str) -> None:
    x, y = images[model]
    weight, bias = _parameters(model, scale=0.5)
    z = logits(x, weight.detach(), bias.detach())
    expected = _numpy_loss(x, y, weight, bias, 0.0)
    assert float(cross_entropy(z, y).mean()) == pytest.approx(expected, rel=1e-12)
    loss, error = cross_entropy_terms(z, y)
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    targets = F.one_hot(y, 10).double() if model == "softmax" else y.double()[:, None]
    torch.testing.assert_close(error, probabilities(z).reshape(error.shape) - targets)


@pytest.mark.parametrize("lam", LAMBDAS)
@pytest.mark.parametrize("model", MODELS)
def test_cpu_autocast_changes_neither_loss_nor_gradients_by_one_bit(
    images, model: str, lam: float
) -> None:
    x, y = images[model]
    x = x.float().requires_grad_()
    weight, bias = (p.detach().float().requires_grad_() for p in _parameters(model, scale=0.5))

    def loss_and_gradients() -> list[torch.Tensor]:
        loss = linear_cross_entropy(x, y, weight, bias, lam)
        # Backward inside the autocast region too, as Lightning's manual_backward runs it.
        return [loss, *torch.autograd.grad(loss, (x, weight, bias))]

    expected = loss_and_gradients()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss_and_gradients()
    for a, b in zip(mixed, expected, strict=True):
        assert a.dtype == torch.float32
        assert torch.equal(a, b)
