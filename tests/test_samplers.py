"""The samplers: DDP processes together see exactly the single-process batches."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler, TensorDataset

from mnist_linear.samplers import ShardSampler, StepPartitionSampler


def _dataset(n: int) -> TensorDataset:
    return TensorDataset(torch.arange(n))


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("world", [2, 3, 4])
def test_union_of_process_batches_is_the_single_process_batch(shuffle: bool, world: int) -> None:
    dataset, global_batch = _dataset(4005), 120
    single = StepPartitionSampler(dataset, global_batch, shuffle, seed=7)
    ranks = [
        StepPartitionSampler(dataset, global_batch // world, shuffle, 7, num_replicas=world, rank=r)
        for r in range(world)
    ]
    for epoch in (0, 1, 5):
        for sampler in [single, *ranks]:
            sampler.set_epoch(epoch)
        steps = list(single.steps())
        per_rank = [list(s.steps()) for s in ranks]
        assert all(len(batches) == len(steps) == 4005 // global_batch for batches in per_rank)
        for step, batch in enumerate(steps):
            assert torch.equal(torch.cat([batches[step] for batches in per_rank]), batch)


def test_samplers_are_distributed_samplers_so_lightning_keeps_them() -> None:
    assert isinstance(StepPartitionSampler(_dataset(10), 2), DistributedSampler)
    assert isinstance(ShardSampler(_dataset(10), 4), DistributedSampler)


def test_last_partial_batch_is_dropped() -> None:
    sampler = StepPartitionSampler(_dataset(4005), 40, shuffle=False)
    assert sampler.steps().shape == (100, 40)
    assert torch.equal(sampler.steps().reshape(-1), torch.arange(4000))


@pytest.mark.parametrize("world", [1, 2])
def test_blocks_are_consecutive_runs_of_the_epochs_steps(world: int) -> None:
    for rank in range(world):
        sampler = StepPartitionSampler(_dataset(4005), 40 // world, True, 3, world, rank, 7)
        sampler.set_epoch(2)
        blocks = list(sampler)
        assert len(sampler) == len(blocks) == 7
        assert [len(b) for b in blocks] == [15, 15, 14, 14, 14, 14, 14]  # 100 steps
        assert torch.equal(torch.cat(blocks), sampler.steps())


def test_there_are_never_more_blocks_than_steps() -> None:
    sampler = StepPartitionSampler(_dataset(100), 40, blocks=10)
    assert len(sampler) == len(list(sampler)) == 2


@pytest.mark.parametrize(
    "n, world, chunk", [(4005, 1, 20000), (4005, 2, 20000), (2000, 3, 300), (5, 4, 1)]
)
def test_shards_cover_the_split_once_with_equal_step_counts(n: int, world: int, chunk: int) -> None:
    samplers = [ShardSampler(_dataset(n), chunk, world, r) for r in range(world)]
    assert len({len(s) for s in samplers}) == 1
    covered = [i for s in samplers for piece in s for i in range(n)[piece]]
    assert covered == list(range(n))
    assert all(piece.stop - piece.start <= chunk for s in samplers for piece in s)


def test_order_is_drawn_at_the_first_batch_not_when_the_iterator_is_made() -> None:
    # A resumed Lightning run makes the loader's iterator before it calls set_epoch.
    sampler = StepPartitionSampler(_dataset(400), 40, shuffle=True, seed=1, blocks=10)
    sampler.set_epoch(3)
    expected = list(sampler)
    sampler.set_epoch(0)
    early = iter(sampler)
    sampler.set_epoch(3)
    assert all(torch.equal(a, b) for a, b in zip(early, expected, strict=True))
