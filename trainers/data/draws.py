"""Per-sample random draws: a training sample's augmentation depends on (trial seed, epoch, sample) only.

Drawn from the process's random state instead, a sample's crop and flip would depend on which process
augments it and on what that process drew before: a data-parallel group (each worker draws for its shard) and
a single process would augment the same global batch differently, and so would two runs with a different
``number_of_workers`` (each DataLoader worker process has its own random state). The training sampler
(:class:`SeededSampler`) therefore hands the dataset a :class:`SampleKey` — the index and the seed of that
sample's draws in this epoch — and the dataset augments the sample inside :func:`sample_draws`, which seeds
torch's and Python's generators for it and restores them after, so nothing else (dropout, other samples)
sees a different random stream.
"""

from __future__ import annotations

import contextlib
import random
from typing import Iterator, NamedTuple

import numpy as np
import torch
from torch.utils.data import DistributedSampler


class SampleKey(NamedTuple):
    """What the training sampler yields for a sample: its index and the seed of its random draws."""

    index: int
    seed: int


def draw_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample ``index``'s draws in ``epoch`` of a trial seeded ``seed``: well mixed, so nearby
    triples (the next sample, the next epoch) get unrelated streams."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0])


class SeededSampler(DistributedSampler):
    """``DistributedSampler`` (one seeded permutation per epoch, split across the workers) yielding
    :class:`SampleKey` s, so each sample's draws follow from the trial seed, the epoch and the sample alone.
    ``skip``: samples of this worker's share of the epoch not yielded again (a trial resumed mid-epoch from a step
    checkpoint, ``trainers.preemption``: the same permutation, the done batches left out); :meth:`set_epoch`
    resets it."""

    skip = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.skip = 0

    def __iter__(self) -> Iterator[SampleKey]:
        for n, i in enumerate(super().__iter__()):
            if n >= self.skip:
                yield SampleKey(i, draw_seed(self.seed, self.epoch, i))


def split_key(key) -> tuple[int, int | None]:
    """(index, seed of its draws, or None where the caller gave a plain index: no seeding)."""
    if isinstance(key, SampleKey):
        return key.index, key.seed
    return key, None


@contextlib.contextmanager
def sample_draws(seed: int | None):
    """Inside: torch's CPU generator and Python's ``random`` seeded by ``seed`` (nothing done for None);
    after: both as they were."""
    if seed is None:
        yield
        return
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(state)
