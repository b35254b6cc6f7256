"""Batch samplers that keep every split a tensor and hand out whole batches.

Both samplers subclass :class:`~torch.utils.data.DistributedSampler`, so that Lightning
keeps them as they are under DDP instead of wrapping them in a sampler of its own, and
both yield one index object per loader batch: a ``DataLoader(dataset, sampler=s,
batch_size=None)`` then fetches each with a single indexing operation on the data
module's ``TensorSplit``, without per-item ``__getitem__`` calls or collation. A
training loader batch is a block of several mini-batches, one evaluation interval.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, DistributedSampler, SequentialSampler


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator determined by ``(seed, epoch)`` alone.

    The pair is hashed to 32 bits because torch's CPU generator (MT19937) keeps only
    the low 32 bits of its seed: ``(seed << 32) | epoch`` would ignore ``seed``.
    """
    digest = hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=4).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


class StepPartitionSampler(DistributedSampler):
    """Training blocks: the epoch's mini-batches, in consecutive runs of steps.

    With ``num_replicas`` processes and ``batch_size`` images each, the global batch
    at step ``s`` is ``order[s*G:(s+1)*G]`` with ``G = batch_size * num_replicas`` and
    ``order`` the epoch's permutation (shuffled from ``seed`` and the epoch, or
    ``0..n-1``). Process ``rank`` takes the ``rank``-th slice of ``batch_size`` of it.
    The trailing ``n mod G`` images are dropped, so every process runs the same number
    of steps. The steps are yielded as ``blocks`` index tensors of shape
    ``(steps, batch_size)``, consecutive, whose step counts differ by at most one (the
    first ones are the longer), so one loader batch is one evaluation interval.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        blocks: int = 1,
    ) -> None:
        super().__init__(
            dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=True,
        )
        self.batch_size = batch_size
        self.global_batch_size = batch_size * num_replicas
        self.num_steps = len(dataset) // self.global_batch_size
        self.blocks = min(blocks, self.num_steps)

    def __len__(self) -> int:
        return self.blocks

    def epoch_order(self) -> torch.Tensor:
        """The order of the whole split in the current epoch, shared by every process."""
        n = len(self.dataset)
        if self.shuffle:
            return torch.randperm(n, generator=epoch_generator(self.seed, self.epoch))
        return torch.arange(n)

    def steps(self) -> torch.Tensor:
        """This process's mini-batches of the epoch, as indices of shape (steps, batch_size)."""
        steps = self.epoch_order()[: self.num_steps * self.global_batch_size]
        return steps.view(self.num_steps, self.num_replicas, self.batch_size)[:, self.rank]

    def __iter__(self) -> Iterator[torch.Tensor]:
        # A generator, so that the order is drawn at the first block rather than when the
        # iterator is made: a resumed Lightning run makes it before calling set_epoch.
        yield from torch.tensor_split(self.steps(), self.blocks)


class SequentialStepSampler(StepPartitionSampler, SequentialSampler):
    """:class:`StepPartitionSampler` in the split's order, never shuffled.

    Being a ``SequentialSampler`` too, it is what Lightning keeps under
    ``overfit_batches``, which replaces any other sampler with a per-image one.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        blocks: int = 1,
    ) -> None:
        super().__init__(dataset, batch_size, False, 0, num_replicas, rank, blocks)


class ShardSampler(DistributedSampler, SequentialSampler):
    """Evaluation batches: one contiguous slice of the split per process, nothing repeated.

    Process ``rank`` of ``num_replicas`` gets the images ``rank*n//R`` to
    ``(rank+1)*n//R``, so the shards add up to the split exactly and metrics summed
    over the processes count every image once. Each shard is cut into the same number
    of chunks of at most ``chunk_size`` images on every process, so that all processes
    run the same number of evaluation steps. Slices index a tensor without copying it.
    It is a ``SequentialSampler`` too, which it is, so that Lightning's
    ``overfit_batches`` keeps it.
    """

    def __init__(
        self, dataset: Dataset, chunk_size: int, num_replicas: int = 1, rank: int = 0
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        n = len(dataset)
        start, stop = rank * n // num_replicas, (rank + 1) * n // num_replicas
        largest_shard = -(-n // num_replicas)
        chunks = max(1, -(-largest_shard // chunk_size))
        bounds = [start + j * (stop - start) // chunks for j in range(chunks + 1)]
        self.slices = [slice(a, b) for a, b in itertools.pairwise(bounds)]

    def __len__(self) -> int:
        return len(self.slices)

    def __iter__(self) -> Iterator[slice]:
        return iter(self.slices)
