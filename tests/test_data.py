"""MNISTSubsetDataModule hands out exactly the assignment's data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import REPO, two_vs_three

from mnist_linear.data import MNISTSubsetDataModule, SplitTooSmallError


@pytest.fixture(scope="module")
def mnist_raw(mnist_root: Path) -> tuple[torchvision.datasets.MNIST, torchvision.datasets.MNIST]:
    return (
        torchvision.datasets.MNIST(mnist_root, train=True),
        torchvision.datasets.MNIST(mnist_root, train=False),
    )


@pytest.fixture(scope="module")
def all_digits(mnist_root: Path) -> MNISTSubsetDataModule:
    dm = MNISTSubsetDataModule(data_dir=str(mnist_root))
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def twos_threes(mnist_root: Path) -> MNISTSubsetDataModule:
    return two_vs_three(mnist_root)


def _idx(mnist_root: Path, name: str) -> np.ndarray:
    """A raw IDX file's bytes after its header: 16 bytes for images, 8 for labels."""
    data = (mnist_root / "MNIST" / "raw" / name).read_bytes()
    return np.frombuffer(data, dtype=np.uint8, offset=16 if "images" in name else 8)


def _pixels(images: torch.Tensor) -> torch.Tensor:
    return images.reshape(len(images), 784).float() / 255


def test_all_digit_splits_are_the_prescribed_slices(all_digits, mnist_raw) -> None:
    train, test = mnist_raw
    assert [len(s) for s in (all_digits.train_set, all_digits.val_set, all_digits.test_set)] == [
        20000,
        2000,
        2000,
    ]
    x, y = all_digits.val_set.tensors
    assert torch.equal(x, _pixels(train.data[20000:22000]))
    assert torch.equal(y, train.targets[20000:22000])
    x, y = all_digits.train_set.tensors
    assert torch.equal(x, _pixels(train.data[:20000]))
    assert torch.equal(y, train.targets[:20000])
    x, y = all_digits.test_set.tensors
    assert torch.equal(x, _pixels(test.data[8000:]))
    assert torch.equal(y, test.targets[8000:])
    assert all_digits.num_classes == 10
    assert all_digits.num_features == 784


def test_two_digit_subset_sizes_and_counts(twos_threes) -> None:
    sizes = [len(s) for s in (twos_threes.train_set, twos_threes.val_set, twos_threes.test_set)]
    assert sizes == [4005, 421, 405]
    labels = twos_threes.train_set.tensors[1]
    assert int((labels == 1).sum()) == 1929
    assert int((labels == 0).sum()) == 2076
    assert twos_threes.num_classes == 2


@pytest.mark.parametrize("classes", [[2, 3], [3, 2], [0, 9]])
def test_first_class_is_labelled_one(mnist_root: Path, mnist_raw, classes: list[int]) -> None:
    train, _ = mnist_raw
    dm = MNISTSubsetDataModule(data_dir=str(mnist_root), classes=classes)
    dm.setup()
    digits = train.targets[:20000]
    keep = (digits == classes[0]) | (digits == classes[1])
    x, y = dm.train_set.tensors
    assert torch.equal(y, (digits[keep] == classes[0]).long())
    assert torch.equal(x, _pixels(train.data[:20000][keep]))
    assert dm.class_names == [str(classes[1]), str(classes[0])]


def test_pixels_are_float32_in_unit_range_and_labels_int64(all_digits) -> None:
    for split in (all_digits.train_set, all_digits.val_set, all_digits.test_set):
        x, y = split.tensors
        assert x.dtype == torch.float32 and x.shape[1] == 784
        assert y.dtype == torch.int64 and y.shape == (len(x),)
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0


def test_class_means_are_mean_training_images(mnist_root: Path, twos_threes) -> None:
    images = _idx(mnist_root, "train-images-idx3-ubyte").reshape(60000, 784)[:20000]
    digits = _idx(mnist_root, "train-labels-idx1-ubyte")[:20000]
    assert twos_threes.class_means.shape == (2, 784)
    for label, digit in ((1, 2), (0, 3)):
        expected = images[digits == digit].mean(axis=0, dtype=np.float64) / 255
        np.testing.assert_allclose(twos_threes.class_means[label], expected, rtol=0, atol=1e-6)


def _epoch_order(dm: MNISTSubsetDataModule, epoch: int) -> torch.Tensor:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return torch.cat([y.reshape(-1) for _, y in loader])


def test_training_order_is_fixed_by_seed_and_epoch(mnist_root: Path, twos_threes) -> None:
    again, other_seed = two_vs_three(mnist_root), two_vs_three(mnist_root, seed=43)
    first = _epoch_order(twos_threes, 3)
    assert torch.equal(first, _epoch_order(again, 3))
    assert not torch.equal(first, _epoch_order(twos_threes, 4))
    assert not torch.equal(first, _epoch_order(other_seed, 3))


def test_train_loader_serves_blocks_of_full_batches_and_drops_the_rest(twos_threes) -> None:
    loader = twos_threes.train_dataloader()
    blocks = list(loader)
    assert len(loader) == len(blocks) == 10  # one block per evaluation
    assert all(x.shape == (10, 40, 784) and y.shape == (10, 40) for x, y in blocks)
    # Epoch 0's order, as samplers.py documents it: torch.randperm of the 4005 images,
    # seeded with the 32 bits of blake2b("seed:epoch"); the first 100 x 40 in that order
    # make the 100 steps, the last 5 are dropped.
    digest = hashlib.blake2b(b"42:0", digest_size=4).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest, "little"))
    order = torch.randperm(4005, generator=generator)[:4000]
    x, y = twos_threes.train_set.tensors
    assert torch.equal(torch.cat([bx for bx, _ in blocks]).reshape(4000, 784), x[order])
    assert torch.equal(torch.cat([by for _, by in blocks]).reshape(4000), y[order])


@pytest.mark.parametrize("evaluations, sizes", [(10, [10] * 8 + [9] * 2), (3, [33, 33, 32])])
def test_blocks_differ_by_at_most_one_step(mnist_root: Path, evaluations, sizes) -> None:
    dm = MNISTSubsetDataModule(
        data_dir=str(mnist_root), classes=[4, 9], evaluations_per_epoch=evaluations
    )
    dm.setup()  # 4s and 9s: 98 steps an epoch
    assert [len(x) for x, _ in dm.train_dataloader()] == sizes


def test_a_batch_is_gathered_row_for_row_as_advanced_indexing_would(all_digits) -> None:
    split = all_digits.train_set
    x, y = split.tensors
    index = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))[:40]
    bx, by = split[index]
    assert torch.equal(bx, x[index]) and torch.equal(by, y[index])
    block = index.view(4, 10)
    bx, by = split[block]
    assert torch.equal(bx, x[block]) and torch.equal(by, y[block])
    sx, sy = split[slice(100, 140)]
    assert sx.data_ptr() == x[100].data_ptr() and torch.equal(sy, y[100:140])
    px, py = split[7]
    assert torch.equal(px, x[7]) and int(py) == int(y[7])


def test_unshuffled_order_is_the_split_order(mnist_root: Path) -> None:
    dm = MNISTSubsetDataModule(data_dir=str(mnist_root), shuffle=False, batch_size=64)
    dm.setup()
    xs = torch.cat([x.reshape(-1, 784) for x, _ in dm.train_dataloader()])
    assert torch.equal(xs, dm.train_set.tensors[0][: 312 * 64])


def test_val_loaders_serve_train_val_test_whole(all_digits) -> None:
    loaders = all_digits.val_dataloader()
    served = [torch.cat([y for _, y in loader]) for loader in loaders]
    expected = [
        s.tensors[1] for s in (all_digits.train_set, all_digits.val_set, all_digits.test_set)
    ]
    assert all(torch.equal(a, b) for a, b in zip(served, expected, strict=True))
    ((x, _),) = list(all_digits.test_dataloader())
    assert torch.equal(x, all_digits.test_set.tensors[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"classes": [2, 12]},
            r"classes must be None .* two distinct digits from 0 to 9.*\[2, 12\]",
        ),
        ({"classes": [-1, 3]}, r"classes must be .*\[-1, 3\]"),
        ({"classes": [4, 4]}, r"classes must be .*two distinct digits.*\[4, 4\]"),
        ({"classes": [1, 2, 3]}, r"classes must be .*\[1, 2, 3\]"),
        ({"classes": [7]}, r"classes must be .*\[7\]"),
        ({"train_size": 0}, r"train_size must be a positive integer, got 0"),
        ({"val_size": -5}, r"val_size must be a positive integer, got -5"),
        ({"test_size": 0}, r"test_size must be a positive integer, got 0"),
        ({"train_size": 59000, "val_size": 2000}, r"train_size \+ val_size must be at most 60000"),
        ({"test_size": 10001}, r"test_size must be at most 10000, got 10001"),
        ({"batch_size": 0}, r"batch_size must be a positive integer, got 0"),
        ({"batch_size": 20001}, r"batch_size must be at most train_size \(20000\), got 20001"),
        ({"seed": -1}, r"seed must be an integer from 0 to 4294967295, got -1"),
        ({"data_dir": "README.md"}, r"data_dir must be a folder .*, got 'README.md' \('README"),
        ({"data_dir": "README.md/data"}, r"data_dir must be a folder .*'README.md' is not a"),
    ],
)
def test_bad_arguments_are_refused_at_construction(
    kwargs: dict, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # where README.md is a file
    with pytest.raises(ValueError, match=message):
        MNISTSubsetDataModule(**kwargs)


def test_batch_larger_than_the_filtered_training_split_is_refused_at_setup(
    mnist_root: Path,
) -> None:
    dm = MNISTSubsetDataModule(data_dir=str(mnist_root), classes=[2, 3], batch_size=5000)
    with pytest.raises(
        SplitTooSmallError, match=r"batch_size must be at most 4005 for a training split of 4005"
    ):
        dm.setup()
