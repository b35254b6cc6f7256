"""The same training as train.py in a plain PyTorch loop, without Lightning, for the benchmark.

Softmax regression through the project's hand-derived gradient (``mnist_linear.gradients``,
which needs only torch): mini-batches of 40 in a seeded order, SGD with
α0 / (1 + t/T), loss and accuracy on training, validation and test ten times per epoch,
for a fixed number of epochs. Prints one JSON line of timings.

    python benchmarks/torch_loop.py --data_dir data --epochs 20
"""

from __future__ import annotations

import time

START = time.perf_counter()

import torch  # noqa: E402
from loop import parse_args, train  # noqa: E402

from mnist_linear.gradients import cross_entropy, linear_cross_entropy, logits  # noqa: E402
from mnist_linear.splits import NUM_FEATURES, TEST_SIZE, TRAIN_SIZE, VAL_SIZE  # noqa: E402


def read_idx(path: str, offset: int) -> torch.Tensor:
    with open(path, "rb") as f:
        return torch.frombuffer(bytearray(f.read()[offset:]), dtype=torch.uint8)


def load(data_dir: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    raw = f"{data_dir}/MNIST/raw"
    train_x = read_idx(f"{raw}/train-images-idx3-ubyte", 16).reshape(-1, NUM_FEATURES).float() / 255
    train_y = read_idx(f"{raw}/train-labels-idx1-ubyte", 8).long()
    test_x = read_idx(f"{raw}/t10k-images-idx3-ubyte", 16).reshape(-1, NUM_FEATURES).float() / 255
    test_y = read_idx(f"{raw}/t10k-labels-idx1-ubyte", 8).long()
    end = TRAIN_SIZE + VAL_SIZE
    return {
        "train": (train_x[:TRAIN_SIZE], train_y[:TRAIN_SIZE]),
        "val": (train_x[TRAIN_SIZE:end], train_y[TRAIN_SIZE:end]),
        "test": (test_x[-TEST_SIZE:], test_y[-TEST_SIZE:]),
    }


@torch.no_grad()
def evaluate(layer: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    z = logits(x, layer.weight, layer.bias)
    return cross_entropy(z, y).mean().item(), (z.argmax(dim=1) == y).float().mean().item()


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0])
    splits = load(args.data_dir)
    x_train, y_train = splits["train"]
    layer = torch.nn.Linear(NUM_FEATURES, 10)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    optimizer = torch.optim.SGD(layer.parameters(), lr=args.learning_rate)
    generator = torch.Generator().manual_seed(42)

    def step(batch: torch.Tensor, lr: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad()
        linear_cross_entropy(x_train[batch], y_train[batch], layer.weight, layer.bias).backward()
        optimizer.step()

    def evaluate_all() -> float:
        history = {name: evaluate(layer, *split) for name, split in splits.items()}
        return history["val"][1]

    train(
        args,
        len(x_train),
        lambda: torch.randperm(len(x_train), generator=generator),
        step,
        evaluate_all,
        START,
    )


if __name__ == "__main__":
    main()
