"""MNISTSubsetDataModule: the assignment's 20k/2k/2k splits, optionally two digits only."""

from __future__ import annotations

import lightning as L
import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset
from torchvision.datasets.mnist import read_label_file

from mnist_linear.errors import Digit, Folder, PositiveInt, Seed, check_folder, check_int
from mnist_linear.mnist_files import ensure_mnist
from mnist_linear.samplers import SequentialStepSampler, ShardSampler, StepPartitionSampler
from mnist_linear.splits import (
    MNIST_TEST_SIZE,
    MNIST_TRAIN_SIZE,
    NUM_FEATURES,
    TEST_SIZE,
    TRAIN_SIZE,
    VAL_SIZE,
)

EVAL_CHUNK_SIZE = 20000


def _check_classes(classes: object) -> tuple[int, int] | None:
    if classes is None:
        return None
    allowed = "None (all ten digits) or two distinct digits from 0 to 9, such as [2, 3]"
    if (
        not isinstance(classes, list | tuple)
        or len(classes) != 2
        or not all(isinstance(c, int) and not isinstance(c, bool) for c in classes)
    ):
        raise ValueError(f"classes must be {allowed}, got {classes!r}")
    if not all(0 <= c <= 9 for c in classes) or classes[0] == classes[1]:
        raise ValueError(f"classes must be {allowed}, got {list(classes)!r}")
    return classes[0], classes[1]


class TensorSplit(TensorDataset):
    """A :class:`~torch.utils.data.TensorDataset` indexed by a whole batch at a time.

    An index tensor of any shape gathers its rows with one ``index_select`` each, which
    costs a third of ``x[index]``'s advanced indexing for a batch of 40 rows; each result
    has the index's shape in front (a block of S steps of B images gives S x B x 784).
    The gathering happens where the tensors are: an index on another device is moved
    there, not the data. A slice gives views.
    """

    def __getitem__(self, index: torch.Tensor | slice | int) -> tuple[torch.Tensor, ...]:
        if isinstance(index, torch.Tensor):
            flat = index.reshape(-1).to(self.tensors[0].device)
            return tuple(
                tensor.index_select(0, flat).view(*index.shape, *tensor.shape[1:])
                for tensor in self.tensors
            )
        return super().__getitem__(index)

    def to(self, device: torch.device | str) -> TensorSplit:
        """This split with its tensors on ``device``: itself if they are there already."""
        device = torch.device(device)
        if all(t.device == device for t in self.tensors):
            return self
        return TensorSplit(*(t.to(device) for t in self.tensors))


class SplitTooSmallError(ValueError):
    """A split that, known only once the labels are read, is empty or too small.

    The message starts with the data module's argument to change (``val_size must be``).
    """


class MNISTSubsetDataModule(L.LightningDataModule):
    """MNIST as the assignment splits it, held as tensors.

    Training is the first ``train_size`` images of the MNIST training set, validation
    the next ``val_size`` (indices 20000 to 21999 by default), test the last
    ``test_size`` images of the MNIST test set. With ``classes=[a, b]`` every split
    keeps only those digits, labelled 1 for ``a`` and 0 for ``b``; with ``None`` the
    label is the digit. Pixels are float32 in [0, 1], flattened to 784 features.

    Args:
        data_dir: Folder of the raw files (``<data_dir>/MNIST/raw``), made if needed.
        classes: ``None`` for all ten digits, or two distinct digits ``[positive, negative]``.
        train_size: Images taken from the start of the MNIST training set.
        val_size: Images taken right after the training images.
        test_size: Images taken from the end of the MNIST test set.
        batch_size: Training images per step and process.
        evaluations_per_epoch: The training loader yields each epoch as this many blocks
            of consecutive mini-batches (their step counts differ by at most one), and
            the Trainer evaluates after each block (``val_check_interval: 1``).
        shuffle: Shuffle the training split every epoch, from ``seed`` and the epoch.
        seed: Seed of the shuffling, from 0 to 2**32 - 1.
    """

    def __init__(
        self,
        data_dir: Folder = "data",
        classes: list[Digit] | None = None,
        train_size: PositiveInt = TRAIN_SIZE,
        val_size: PositiveInt = VAL_SIZE,
        test_size: PositiveInt = TEST_SIZE,
        batch_size: PositiveInt = 40,
        evaluations_per_epoch: PositiveInt = 10,
        shuffle: bool = True,
        seed: Seed = 42,
    ) -> None:
        super().__init__()
        check_folder("data_dir", data_dir)
        self.classes = _check_classes(classes)
        for name, value in (
            ("train_size", train_size),
            ("val_size", val_size),
            ("test_size", test_size),
            ("batch_size", batch_size),
            ("evaluations_per_epoch", evaluations_per_epoch),
        ):
            check_int(name, value, 1, allowed="a positive integer")
        if train_size + val_size > MNIST_TRAIN_SIZE:
            raise ValueError(
                f"train_size + val_size must be at most {MNIST_TRAIN_SIZE}, "
                f"got {train_size} + {val_size} = {train_size + val_size}"
            )
        if test_size > MNIST_TEST_SIZE:
            raise ValueError(f"test_size must be at most {MNIST_TEST_SIZE}, got {test_size}")
        if batch_size > train_size:
            raise ValueError(
                f"batch_size must be at most train_size ({train_size}), got {batch_size}"
            )
        check_int("seed", seed, 0, 2**32 - 1)
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.train_size, self.val_size, self.test_size = train_size, val_size, test_size
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.evaluations_per_epoch = evaluations_per_epoch
        self.train_set: TensorSplit | None = None
        self.val_set: TensorSplit | None = None
        self.test_set: TensorSplit | None = None
        self.class_means: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return 10 if self.classes is None else 2

    @property
    def num_features(self) -> int:
        return NUM_FEATURES

    @property
    def class_names(self) -> list[str]:
        """The digit behind each label: ``class_names[label]``."""
        if self.classes is None:
            return [str(d) for d in range(10)]
        positive, negative = self.classes
        return [str(negative), str(positive)]

    def prepare_data(self) -> None:
        ensure_mnist(self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        """Read the splits once; under a Trainer, keep them on its process's device.

        On that device an evaluation is one pass over tensors already there (Lightning's
        batch transfer of them is a no-op) and a training block is gathered there, so
        no split crosses from host to device more than once. Under DDP each process
        holds its own copy on its own device.
        """
        if self.train_set is None:
            self._read_splits()
        # Again on every call: the number of processes is known only once the Trainer runs.
        self._check_batch(len(self.train_set), self._replicas()[0])
        if self.trainer is not None:
            device = self.trainer.strategy.root_device
            self.train_set, self.val_set, self.test_set = (
                split.to(device) for split in (self.train_set, self.val_set, self.test_set)
            )

    def _read_splits(self) -> None:
        root = ensure_mnist(self.data_dir).parent.parent
        train = torchvision.datasets.MNIST(root, train=True, download=False)
        test = torchvision.datasets.MNIST(root, train=False, download=False)
        self._check_sizes(train.targets, test.targets, self._replicas()[0])
        end = self.train_size + self.val_size
        self.train_set = self.subset(
            train.data[: self.train_size], train.targets[: self.train_size]
        )
        self.val_set = self.subset(
            train.data[self.train_size : end], train.targets[self.train_size : end]
        )
        self.test_set = self.subset(test.data[-self.test_size :], test.targets[-self.test_size :])
        x, y = self.train_set.tensors
        self.class_means = torch.stack([x[y == k].mean(dim=0) for k in range(self.num_classes)])

    def check_fits(self, num_replicas: int = 1) -> None:
        """Raise :class:`SplitTooSmallError` where :meth:`setup` would, reading only the labels.

        A split is refused when it would hold no image, the training split when a class
        has no image in it or when it holds fewer images than one step takes on
        ``num_replicas`` processes. Without loading the splits, so that a run refuses
        before it starts its processes (the main process of ``ddp_spawn``, whose workers
        would each fail on their own).
        """
        folder = ensure_mnist(self.data_dir)
        self._check_sizes(
            read_label_file(str(folder / "train-labels-idx1-ubyte")).long(),
            read_label_file(str(folder / "t10k-labels-idx1-ubyte")).long(),
            num_replicas,
        )

    def training_blocks(self, num_replicas: int = 1) -> tuple[int, int]:
        """``(blocks, steps)`` of a training epoch on ``num_replicas`` processes, from the labels.

        ``steps`` is the training images kept // (``batch_size`` x ``num_replicas``), and
        the loader yields ``evaluations_per_epoch`` blocks of them, at most one per step.
        """
        folder = ensure_mnist(self.data_dir)
        digits = read_label_file(str(folder / "train-labels-idx1-ubyte")).long()[: self.train_size]
        kept = (
            len(digits)
            if self.classes is None
            else int(torch.isin(digits, torch.tensor(self.classes)).sum())
        )
        steps = kept // (self.batch_size * num_replicas)
        return min(self.evaluations_per_epoch, steps), steps

    def _check_sizes(
        self, train_digits: torch.Tensor, test_digits: torch.Tensor, num_replicas: int
    ) -> None:
        digits = list(range(10)) if self.classes is None else list(self.classes)
        which = "all ten digits" if self.classes is None else f"classes {digits}"
        kept = torch.isin(train_digits, torch.tensor(digits))
        # The shortest training split holding every class, validation split and test split
        # holding an image: from the first (or, for test, the last) index of each digit.
        firsts = [int((train_digits == d).nonzero()[0]) for d in digits]
        after = kept[self.train_size :].nonzero()
        lasts = torch.isin(test_digits, torch.tensor(digits)).nonzero()
        needed = {
            "train_size": (max(firsts) + 1, "so that every class has a training image"),
            "val_size": (
                int(after[0]) + 1 if len(after) else None,
                "so that the validation split holds an image",
            ),
            "test_size": (
                len(test_digits) - int(lasts[-1]),
                "so that the test split holds an image",
            ),
        }
        for name, (minimum, why) in needed.items():
            value = getattr(self, name)
            if minimum is None or value < minimum:
                allowed = "a smaller train_size" if minimum is None else f"at least {minimum}"
                raise SplitTooSmallError(
                    f"{name} must be {allowed} with {which}, {why}, got {value}"
                )
        self._check_batch(int(kept[: self.train_size].sum()), num_replicas)

    def _check_batch(self, train_images: int, num_replicas: int) -> None:
        if self.batch_size * num_replicas > train_images:
            raise SplitTooSmallError(
                f"batch_size must be at most {train_images // num_replicas} for a training split "
                f"of {train_images} images on {num_replicas} process(es), got {self.batch_size}"
            )

    def subset(self, images: torch.Tensor, digits: torch.Tensor) -> TensorSplit:
        """Raw MNIST images (uint8, N x 28 x 28) and digits as a split: pixels and labels."""
        if self.classes is None:
            labels = digits
        else:
            positive, negative = self.classes
            keep = (digits == positive) | (digits == negative)
            images, labels = images[keep], (digits[keep] == positive).long()
        x = images.reshape(len(images), NUM_FEATURES).float().div_(255.0)
        return TensorSplit(x, labels.long().contiguous())

    def _replicas(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _overfitting(self) -> bool:
        return self.trainer is not None and self.trainer.overfit_batches > 0

    def _loader(self, dataset: TensorSplit, sampler: torch.utils.data.Sampler) -> DataLoader:
        return DataLoader(dataset, sampler=sampler, batch_size=None)

    def train_dataloader(self) -> DataLoader:
        """Blocks of mini-batches of ``batch_size``, ``evaluations_per_epoch`` of them an epoch.

        A block is ``(x, y)`` of shapes (steps, batch_size, 784) and (steps, batch_size);
        the last partial mini-batch is dropped. Under the Trainer's ``overfit_batches``
        the blocks come in the split's order, unshuffled.
        """
        num_replicas, rank = self._replicas()
        blocks = self.evaluations_per_epoch
        if self._overfitting():
            sampler = SequentialStepSampler(
                self.train_set, self.batch_size, num_replicas, rank, blocks
            )
        else:
            sampler = StepPartitionSampler(
                self.train_set, self.batch_size, self.shuffle, self.seed, num_replicas, rank, blocks
            )
        return self._loader(self.train_set, sampler)

    def _eval_loader(self, dataset: TensorSplit) -> DataLoader:
        num_replicas, rank = self._replicas()
        chunk_size = EVAL_CHUNK_SIZE
        if self._overfitting():
            # The Trainer evaluates the first N batches of each loader: a block's images
            # each, so that train/* measures the N blocks being fitted.
            steps = len(self.train_set) // (self.batch_size * num_replicas)
            chunk_size = -(-steps // self.evaluations_per_epoch) * self.batch_size
        return self._loader(dataset, ShardSampler(dataset, chunk_size, num_replicas, rank))

    def splits(self) -> dict[str, TensorSplit]:
        """The three splits by stage name: ``train``, ``val``, ``test``."""
        return {"train": self.train_set, "val": self.val_set, "test": self.test_set}

    @staticmethod
    def eval_batches(dataset: TensorSplit) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The whole split in one process, in the chunks a single-process evaluation uses."""
        return [dataset[piece] for piece in ShardSampler(dataset, EVAL_CHUNK_SIZE)]

    def val_dataloader(self) -> list[DataLoader]:
        """Three loaders, in this order: the whole training split, validation, test."""
        return [self._eval_loader(s) for s in (self.train_set, self.val_set, self.test_set)]

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)
