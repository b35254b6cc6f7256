"""The same training as train.py in a plain PyTorch loop, without Lightning, for the benchmark.

Softmax regression through the project's hand-derived gradient (``mnist_linear.gradients``,
which needs only torch): mini-batches of 40 in a seeded order, SGD with
α0 / (1 + t/T), loss and accuracy on training, validation and test ten times per epoch,
for a fixed number of epochs. Prints one JSON line of timings.

    python benchmarks/torch_loop.py --data_dir data --epochs 20
"""

from __future__ import annotations

import argparse
import json
import time

START = time.perf_counter()

import torch  # noqa: E402

from mnist_linear.gradients import cross_entropy, linear_cross_entropy, logits  # noqa: E402


def read_idx(path: str, offset: int) -> torch.Tensor:
    with open(path, "rb") as f:
        return torch.frombuffer(bytearray(f.read()[offset:]), dtype=torch.uint8)


def load(data_dir: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    raw = f"{data_dir}/MNIST/raw"
    train_x = read_idx(f"{raw}/train-images-idx3-ubyte", 16).reshape(-1, 784).float() / 255
    train_y = read_idx(f"{raw}/train-labels-idx1-ubyte", 8).long()
    test_x = read_idx(f"{raw}/t10k-images-idx3-ubyte", 16).reshape(-1, 784).float() / 255
    test_y = read_idx(f"{raw}/t10k-labels-idx1-ubyte", 8).long()
    return {
        "train": (train_x[:20000], train_y[:20000]),
        "val": (train_x[20000:22000], train_y[20000:22000]),
        "test": (test_x[-2000:], test_y[-2000:]),
    }


@torch.no_grad()
def evaluate(layer: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    z = logits(x, layer.weight, layer.bias)
    return cross_entropy(z, y).mean().item(), (z.argmax(dim=1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--learning_rate", type=float, default=0.2)
    parser.add_argument("--T", type=float, default=1000)
    parser.add_argument("--batch_size", type=int, default=40)
    args = parser.parse_args()

    splits = load(args.data_dir)
    x_train, y_train = splits["train"]
    layer = torch.nn.Linear(784, 10)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    optimizer = torch.optim.SGD(layer.parameters(), lr=args.learning_rate)
    generator = torch.Generator().manual_seed(42)
    steps_per_epoch = len(x_train) // args.batch_size
    evaluate_every = steps_per_epoch // 10
    step, step_seconds, eval_seconds, evaluations = 0, 0.0, 0.0, 0
    history = []
    for _ in range(args.epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for i in range(steps_per_epoch):
            started = time.perf_counter()
            batch = order[i * args.batch_size : (i + 1) * args.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = args.learning_rate / (1 + step / args.T)
            optimizer.zero_grad()
            loss = linear_cross_entropy(x_train[batch], y_train[batch], layer.weight, layer.bias)
            loss.backward()
            optimizer.step()
            step += 1
            step_seconds += time.perf_counter() - started
            if (i + 1) % evaluate_every == 0:
                started = time.perf_counter()
                history.append({name: evaluate(layer, *split) for name, split in splits.items()})
                evaluations += 1
                eval_seconds += time.perf_counter() - started
    print(
        json.dumps(
            {
                "steps": step,
                "evaluations": evaluations,
                "step_seconds": step_seconds,
                "eval_seconds": eval_seconds,
                "val_acc": history[-1]["val"][1],
                "seconds": time.perf_counter() - START,
            }
        )
    )


if __name__ == "__main__":
    main()
