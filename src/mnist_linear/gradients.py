"""Cross-entropy of a linear layer, with its gradient derived by hand.

Notation, for a batch of N images: X (N x D) the pixels, W (K x D) and b (K) the layer,
Z = X W^T + b the logits, P the probabilities, T the targets, λ the L2 strength.

Binary (K = 1): p = sigmoid(z), t in {0, 1},
    L = -1/N sum_n [t_n log p_n + (1 - t_n) log(1 - p_n)] + λ ||W||^2
Softmax (K >= 2): P = softmax(Z) row-wise, T one-hot,
    L = -1/N sum_n sum_k T_nk log P_nk + λ ||W||^2

Both have the same gradient, because dL/dZ = (P - T) / N for either activation:
    dL/dW = (P - T)^T X / N + 2 λ W
    dL/db = sum_n (P_n - T_n) / N
    dL/dX = (P - T) W / N
The derivations are in docs/derivations.md.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.autograd.function import FunctionCtx


def logits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Z = X W^T + b, shape (N, K)."""
    return torch.addmm(bias, x, weight.t())


def cross_entropy(z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-image cross-entropy for logits of shape (N, 1) (binary) or (N, K) (softmax).

    Binary: -log p = softplus(-z) and -log(1 - p) = softplus(z), so the loss is
    softplus(z) - t z. Softmax: -log P_t = logsumexp(z) - z_t. Both forms stay finite
    for any finite logits.
    """
    if z.shape[1] == 1:
        z = z[:, 0]
        return F.softplus(z) - targets.to(z.dtype) * z
    return torch.logsumexp(z, dim=1) - z.gather(1, targets[:, None])[:, 0]


def cross_entropy_terms(
    z: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of :func:`cross_entropy` over the batch, and the error P - T.

    Binary: torch's stable binary cross-entropy with logits, and sigmoid(z) - t.
    Softmax: ``nll_loss`` of ``log_softmax(z)``, and softmax(z) - one_hot(t), with the
    softmax taken as the exponential of that same ``log_softmax``.
    """
    if z.shape[1] == 1:
        t = targets.to(z.dtype)
        loss = F.binary_cross_entropy_with_logits(z[:, 0], t)
        return loss, torch.sigmoid(z) - t[:, None]
    log_p = torch.log_softmax(z, dim=1)
    loss = F.nll_loss(log_p, targets)
    return loss, log_p.exp() - F.one_hot(targets, z.shape[1]).to(z.dtype)


def probabilities(z: torch.Tensor) -> torch.Tensor:
    """p = sigmoid(z) of shape (N,) for one logit, softmax(Z) of shape (N, K) otherwise."""
    return torch.sigmoid(z[:, 0]) if z.shape[1] == 1 else torch.softmax(z, dim=1)


def autocast_off(device_type: str, enabled: bool = True) -> torch.autocast | contextlib.nullcontext:
    """A context with autocast off for ``device_type``, or nothing when ``enabled`` is false.

    Entering an autocast context costs microseconds on every step, so the Function
    enters one only when autocast is on.
    """
    return torch.autocast(device_type, enabled=False) if enabled else contextlib.nullcontext()


class LinearCrossEntropy(torch.autograd.Function):
    """Fused linear layer, sigmoid or softmax, mean cross-entropy and L2 penalty.

    forward: L = mean_n CE(Z_n, T_n) + λ ||W||^2 with Z = X W^T + b.
    backward: the gradients of g L, g being the incoming gradient. With E = g (P - T) / N,
        d(gL)/dW = E^T X + 2 λ g W,   d(gL)/db = sum_n E_n,   d(gL)/dX = E W.
    Nothing is differentiated by autograd. Under autocast, on the inputs' device, both
    passes run in float32 with autocast off, so that ``bf16-mixed`` and ``16-mixed``
    change nothing in them; otherwise they run in the inputs' dtype (float64 under
    ``64-true``).
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: torch.Tensor,
        targets: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        l2_lambda: float,
    ) -> torch.Tensor:
        # torch.amp.custom_fwd(cast_inputs=torch.float32) does this for one device type
        # named in advance; the inputs' own device decides here, CPU or GPU alike.
        ctx.device_type = x.device.type
        ctx.autocast = torch.is_autocast_enabled(ctx.device_type)
        if ctx.autocast:
            x, weight, bias = x.float(), weight.float(), bias.float()
        with autocast_off(ctx.device_type, ctx.autocast):
            loss, error = cross_entropy_terms(logits(x, weight, bias), targets)
            ctx.save_for_backward(x, error, weight)
            ctx.l2_lambda = l2_lambda
            if l2_lambda == 0:
                return loss
            return loss + l2_lambda * weight.pow(2).sum()

    @staticmethod
    def backward(
        ctx: FunctionCtx, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor | None, None, torch.Tensor | None, torch.Tensor | None, None]:
        x, error, weight = ctx.saved_tensors
        need_x, _, need_w, need_b, _ = ctx.needs_input_grad
        grad_x = grad_w = grad_b = None
        # manual_backward runs inside the training step's autocast: keep it off here too.
        with autocast_off(ctx.device_type, ctx.autocast):
            # E = g (P - T) / N, with g the incoming gradient: every formula is linear in it.
            e = error * (grad_output / x.shape[0])
            if need_x:
                grad_x = e @ weight
            if need_w:
                if ctx.l2_lambda == 0:
                    grad_w = e.t() @ x
                else:  # 2 λ g W + E^T X as one addmm
                    grad_w = torch.addmm(weight * (2 * ctx.l2_lambda * grad_output), e.t(), x)
            if need_b:
                grad_b = e.sum(dim=0)
        return grad_x, None, grad_w, grad_b, None


def linear_cross_entropy(
    x: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    l2_lambda: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy of ``sigmoid``/``softmax(X W^T + b)`` plus ``l2_lambda * ||W||^2``.

    One output row in ``weight`` means logistic regression with targets in {0, 1};
    K rows mean softmax regression with integer class targets. The backward pass is
    :class:`LinearCrossEntropy`'s hand-derived one.
    """
    return LinearCrossEntropy.apply(x, targets, weight, bias, l2_lambda)
