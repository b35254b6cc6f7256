"""The notebook's algorithm in plain numpy, written for the speed benchmark.

Softmax regression on the assignment's splits: mini-batches of 40, learning rate
α0 / (1 + t/T), loss and accuracy on training, validation and test ten times per epoch,
for a fixed number of epochs. Written as the notebook is: float64 (numpy's ``uint8 / 255``),
the bias trick (a column of ones, so w is 785 x 10), and loss and accuracy each with
its own forward pass. Prints one JSON line with the seconds spent in steps and in
evaluations.

    python benchmarks/numpy_reference.py --data_dir data --epochs 20
"""

from __future__ import annotations

import time

START = time.perf_counter()

import numpy as np  # noqa: E402
from loop import parse_args, train  # noqa: E402

from mnist_linear.splits import NUM_FEATURES, TEST_SIZE, TRAIN_SIZE, VAL_SIZE  # noqa: E402


def read_idx(path: str, offset: int) -> np.ndarray:
    return np.fromfile(path, dtype=np.uint8, offset=offset)


def bias_trick(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)


def load(data_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    raw = f"{data_dir}/MNIST/raw"
    train_x = bias_trick(
        read_idx(f"{raw}/train-images-idx3-ubyte", 16).reshape(-1, NUM_FEATURES) / 255.0
    )
    train_y = read_idx(f"{raw}/train-labels-idx1-ubyte", 8).astype(np.int64)
    test_x = bias_trick(
        read_idx(f"{raw}/t10k-images-idx3-ubyte", 16).reshape(-1, NUM_FEATURES) / 255.0
    )
    test_y = read_idx(f"{raw}/t10k-labels-idx1-ubyte", 8).astype(np.int64)
    end = TRAIN_SIZE + VAL_SIZE
    return {
        "train": (train_x[:TRAIN_SIZE], train_y[:TRAIN_SIZE]),
        "val": (train_x[TRAIN_SIZE:end], train_y[TRAIN_SIZE:end]),
        "test": (test_x[-TEST_SIZE:], test_y[-TEST_SIZE:]),
    }


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def forward(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return softmax(x @ w)


def cross_entropy_loss(targets: np.ndarray, outputs: np.ndarray) -> float:
    return float(-np.mean(np.sum(targets * np.log(outputs), axis=1)))


def calculate_accuracy(x: np.ndarray, targets: np.ndarray, w: np.ndarray) -> float:
    return float(np.mean(forward(x, w).argmax(axis=1) == targets.argmax(axis=1)))


def evaluate(w: np.ndarray, x: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    return cross_entropy_loss(targets, forward(x, w)), calculate_accuracy(x, targets, w)


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0])
    splits = {name: (x, np.eye(10)[y]) for name, (x, y) in load(args.data_dir).items()}
    x_train, targets = splits["train"]
    w = np.zeros((785, 10))
    rng = np.random.default_rng(42)

    def step(batch: np.ndarray, lr: float) -> None:
        x, t = x_train[batch], targets[batch]
        w[...] -= lr * (x.T @ (forward(x, w) - t) / len(batch))

    def evaluate_all() -> float:
        history = {name: evaluate(w, *split) for name, split in splits.items()}
        return history["val"][1]

    train(args, len(x_train), lambda: rng.permutation(len(x_train)), step, evaluate_all, START)


if __name__ == "__main__":
    main()
