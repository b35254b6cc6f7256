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

import argparse
import json
import time

START = time.perf_counter()

import numpy as np  # noqa: E402


def read_idx(path: str, offset: int) -> np.ndarray:
    return np.fromfile(path, dtype=np.uint8, offset=offset)


def bias_trick(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)


def load(data_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    raw = f"{data_dir}/MNIST/raw"
    train_x = bias_trick(read_idx(f"{raw}/train-images-idx3-ubyte", 16).reshape(-1, 784) / 255.0)
    train_y = read_idx(f"{raw}/train-labels-idx1-ubyte", 8).astype(np.int64)
    test_x = bias_trick(read_idx(f"{raw}/t10k-images-idx3-ubyte", 16).reshape(-1, 784) / 255.0)
    test_y = read_idx(f"{raw}/t10k-labels-idx1-ubyte", 8).astype(np.int64)
    return {
        "train": (train_x[:20000], train_y[:20000]),
        "val": (train_x[20000:22000], train_y[20000:22000]),
        "test": (test_x[-2000:], test_y[-2000:]),
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
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--learning_rate", type=float, default=0.2)
    parser.add_argument("--T", type=float, default=1000)
    parser.add_argument("--batch_size", type=int, default=40)
    args = parser.parse_args()

    splits = {name: (x, np.eye(10)[y]) for name, (x, y) in load(args.data_dir).items()}
    x_train, targets = splits["train"]
    w = np.zeros((785, 10))
    rng = np.random.default_rng(42)
    steps_per_epoch = len(x_train) // args.batch_size
    evaluate_every = steps_per_epoch // 10
    step, step_seconds, eval_seconds, evaluations = 0, 0.0, 0.0, 0
    history = []
    for _ in range(args.epochs):
        order = rng.permutation(len(x_train))
        for i in range(steps_per_epoch):
            started = time.perf_counter()
            batch = order[i * args.batch_size : (i + 1) * args.batch_size]
            x, t = x_train[batch], targets[batch]
            gradient = x.T @ (forward(x, w) - t) / len(batch)
            w -= args.learning_rate / (1 + step / args.T) * gradient
            step += 1
            step_seconds += time.perf_counter() - started
            if (i + 1) % evaluate_every == 0:
                started = time.perf_counter()
                history.append({name: evaluate(w, *split) for name, split in splits.items()})
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
