"""Per-sample augmentation draws (trainers.data.draws): a training sample is augmented alike by one worker or by
either worker of a group, whatever was drawn before it and whichever DataLoader process makes it."""

from __future__ import annotations

import random

import pytest
import torch
from torch.utils.data import DataLoader

from trainers import hyperparameters as hp
from trainers.data import prepare_data
from trainers.data.draws import SampleKey, SeededSampler
from trainers.hyperparameters import resolve_hyperparameters
from trainers.tasks import make_task

FAST = {"model_name": "resnet18", "training_crop_size": 32, "validation_resize_size": 32, "validation_crop_size": 32}


@pytest.fixture
def train_set(small_mltable):
    data = prepare_data(hp.MULTICLASS, "label", str(small_mltable), None, 0.2, 0)
    task = make_task(data.task, data.classes)
    return task.train_dataset(resolve_hyperparameters(data.task, FAST, {}), data)


def _keys(ds, world: int, rank: int, epoch: int) -> list[SampleKey]:
    s = SeededSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=7)
    s.set_epoch(epoch)
    return list(s)


def test_two_workers_get_the_keys_one_worker_gets(train_set):
    one = _keys(train_set, 1, 0, epoch=3)
    two = [_keys(train_set, 2, r, epoch=3) for r in (0, 1)]
    assert len(train_set) % 2 == 0  # no padding: the split is exact
    # the one permutation, split rank::2: the same (index, seed) pairs, in the same global order
    assert one == [k for pair in zip(*two) for k in pair]
    assert len({k.seed for k in one}) == len(one)
    # another epoch draws anew for the same sample
    other = {k.index: k.seed for k in _keys(train_set, 1, 0, epoch=4)}
    assert all(other[k.index] != k.seed for k in one)


def test_a_sample_is_augmented_by_its_key_alone_and_leaves_the_process_stream_alone(train_set):
    key = _keys(train_set, 1, 0, epoch=1)[0]
    torch.manual_seed(0)
    random.seed(0)
    before, py_before = torch.get_rng_state(), random.getstate()
    x = train_set[key][0]
    # the process's streams are as they were (dropout and the next sample's draws do not move)
    assert torch.equal(torch.get_rng_state(), before) and random.getstate() == py_before
    torch.rand(1000)  # whatever the process drew before, the sample is the same
    assert torch.equal(train_set[key][0], x)
    # and the augmentation is random: another seed, another crop
    assert not torch.equal(train_set[SampleKey(key.index, key.seed + 1)][0], x)


def test_dataloader_workers_do_not_change_the_draws(train_set):
    sampler = SeededSampler(train_set, num_replicas=1, rank=0, shuffle=True, seed=7)
    sampler.set_epoch(2)
    batches = [[x for x, _ in DataLoader(train_set, batch_size=8, sampler=sampler, num_workers=n)] for n in (0, 2)]
    assert all(torch.equal(a, b) for a, b in zip(*batches)) and len(batches[0]) == len(batches[1]) == 9
