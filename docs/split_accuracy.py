"""Accuracy of a trained softmax model on parts of MNIST that the splits leave out.

Explains why the test split scores above validation: the last 2,000 test images lie in
the easier half of the MNIST test set.

    python docs/split_accuracy.py lightning_logs/version_1/checkpoints/best-*.ckpt
"""

from __future__ import annotations

import sys

import torch
import torchvision

from mnist_linear.model import LinearClassifier


def main() -> None:
    (path,) = sys.argv[1:]
    state = torch.load(path, weights_only=True, map_location="cpu")["state_dict"]
    model = LinearClassifier(state["linear.bias"].numel(), learning_rate=1.0)
    model.load_state_dict({k: v for k, v in state.items() if k.startswith("linear.")})
    train = torchvision.datasets.MNIST("data", train=True)
    test = torchvision.datasets.MNIST("data", train=False)

    def accuracy(data: torchvision.datasets.MNIST, start: int, stop: int) -> float:
        x = data.data[start:stop].reshape(-1, 784).float() / 255
        return 100 * (model.predict(x) == data.targets[start:stop]).float().mean().item()

    rows = [
        ("training split, train[0:20000]", accuracy(train, 0, 20000)),
        ("validation split, train[20000:22000]", accuracy(train, 20000, 22000)),
        *(
            (f"unused, train[{a}:{a + 2000}]", accuracy(train, a, a + 2000))
            for a in range(22000, 60000, 4000)
        ),
        ("test[0:5000]", accuracy(test, 0, 5000)),
        ("test[5000:10000]", accuracy(test, 5000, 10000)),
        ("test split, test[8000:10000]", accuracy(test, 8000, 10000)),
    ]
    for name, value in rows:
        print(f"{name:<40} {value:6.2f}%")


if __name__ == "__main__":
    main()
