"""Per-rank sharding with a resumable position, and per-sample augmentation seeds.

Each sample's random transform is seeded from (seed, epoch, position), so a run is reproducible
whatever the number of loader workers, and a job resumed mid-epoch draws the same augmentations as
an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler


class ShardedSampler(Sampler):
    """Shuffled (or ordered) indices of this rank, yielded as ``(index, sample_seed)``.

    Every epoch is a permutation of ``range(n)`` drawn from ``seed + epoch``, padded by wrapping
    around (train) so that all ranks get the same number of samples, then split rank::world.
    ``start_batch`` skips that many of this rank's batches of the first epoch iterated (resume).
    With ``pad=False`` (evaluation) ranks get disjoint shards and no sample is repeated.
    """

    def __init__(
        self,
        n: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        pad: bool = True,
    ) -> None:
        self.n = n
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.pad = pad
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, start_sample: int = 0) -> None:
        """Select the epoch; ``start_sample`` is the number of this rank's samples to skip."""
        self.epoch = epoch
        self.skip = start_sample

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.pad and self.n:
            total = math.ceil(self.n / self.world_size) * self.world_size
            order = (order * math.ceil(total / self.n))[:total]
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        if self.pad:
            return math.ceil(self.n / self.world_size)
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        base = (self.seed * 1_000_003 + self.epoch) * 1_000_003
        for pos, index in enumerate(self._indices()):
            if pos < self.skip:
                continue
            yield index, (base + pos * self.world_size + self.rank) % (2**63 - 1)


class SeededSamples(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` is produced under ``torch.manual_seed(seed)``.

    The global RNG of the calling process is restored afterwards.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]
