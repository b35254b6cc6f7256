"""The hand-derived backward pass is the gradient of the loss the forward pass computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

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
    out = {}
    for name, classes in (("logistic", [2, 3]), ("softmax", None)):
        dm = MNISTSubsetDataModule(data_dir=str(mnist_root), classes=classes)
        dm.setup()
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


def _reference_loss(x, y, weight, bias, lam):
    """The same objective written with autograd's own operations."""
    z = x @ weight.t() + bias
    if weight.shape[0] == 1:
        ce = F.binary_cross_entropy_with_logits(z[:, 0], y.to(z.dtype))
    else:
        ce = F.cross_entropy(z, y)
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
    reference = _reference_loss(x, y, weight, bias, lam)
    torch.testing.assert_close(loss, reference, rtol=1e-12, atol=1e-12)
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
    pixels = [0, 150, 300, 350, 406, 430, 500, 600, 783]  # border and digit pixels
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("model", MODELS)
def test_huge_logits_stay_finite(model: str, dtype: torch.dtype) -> None:
    k = 1 if model == "logistic" else 10
    x = torch.eye(784, dtype=dtype)[:4]
    y = torch.tensor([0, 1, 1, 0])
    for magnitude in (1e2, 1e3, 1e4):
        weight = torch.zeros(k, 784, dtype=dtype)
        weight[:, :4] = magnitude * torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=dtype)
        if k > 1:
            weight[1:] *= -1
        weight.requires_grad_()
        bias = torch.zeros(k, dtype=dtype, requires_grad=True)
        loss = linear_cross_entropy(x, y, weight, bias, 0.1)
        grad_w, grad_b = torch.autograd.grad(loss, (weight, bias))
        assert torch.isfinite(loss)
        assert torch.isfinite(grad_w).all() and torch.isfinite(grad_b).all()
        reference = _reference_loss(x, y, weight, bias, 0.1)
        torch.testing.assert_close(loss, reference.to(dtype), rtol=1e-5, atol=1e-5)


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
    expected = _reference_loss(x, y, weight.detach(), bias.detach(), 0.0)
    torch.testing.assert_close(cross_entropy(z, y).mean(), expected, rtol=1e-12, atol=1e-12)
    loss, error = cross_entropy_terms(z, y)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
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
