"""Accuracy of a trained model on parts of MNIST that the splits leave out.

Explains why the test split scores above validation: the last 2,000 test images lie in
the easier half of the MNIST test set. A binary checkpoint is measured on the images
of its two digits only.

    python docs/split_accuracy.py lightning_logs/version_1/checkpoints/best-*.ckpt
"""

from __future__ import annotations

import argparse

import torchvision

from mnist_linear.data import MNISTSubsetDataModule
from mnist_linear.mnist_files import ensure_mnist
from mnist_linear.model import LinearClassifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="A checkpoint written by train.py.")
    parser.add_argument("--data_dir", help="Folder of the MNIST files (default: the run's).")
    args = parser.parse_args()
    model = LinearClassifier.load_from_checkpoint(args.checkpoint, map_location="cpu")
    data = MNISTSubsetDataModule.load_from_checkpoint(args.checkpoint)
    root = ensure_mnist(args.data_dir or data.data_dir).parents[1]
    train = torchvision.datasets.MNIST(root, train=True)
    test = torchvision.datasets.MNIST(root, train=False)
    start, end = data.train_size, data.train_size + data.val_size

    def accuracy(split: torchvision.datasets.MNIST, first: int, stop: int) -> float:
        x, labels = data.subset(split.data[first:stop], split.targets[first:stop]).tensors
        return 100 * (model.predict(x) == labels).float().mean().item()

    rows = [
        (f"training split, train[0:{data.train_size}]", accuracy(train, 0, data.train_size)),
        (f"validation split, train[{start}:{end}]", accuracy(train, start, end)),
        *(
            (f"unused, train[{a}:{a + 2000}]", accuracy(train, a, a + 2000))
            for a in range(end, len(train) - 1999, 4000)
        ),
        ("test[0:5000]", accuracy(test, 0, 5000)),
        ("test[5000:10000]", accuracy(test, 5000, 10000)),
        (
            f"test split, test[{len(test) - data.test_size}:{len(test)}]",
            accuracy(test, len(test) - data.test_size, len(test)),
        ),
    ]
    for name, value in rows:
        print(f"{name:<40} {value:6.2f}%")


if __name__ == "__main__":
    main()
