"""SyncBatchNorm in data-parallel trials (trainers.batchnorm): two gloo workers on CPU under DDP, each with half a
batch, take the step one process takes with the whole batch."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from trainers.batchnorm import CpuSyncBatchNorm, sync_batchnorm

# What may differ is the order of float32 additions (sums split over two workers, then added; DDP's average of
# two gradients): a few ulps of the values involved. One step's activations and gradients here are O(1) and
# agree to ~4e-7; 1e-5 leaves ~100 ulps of slack, while per-worker statistics move them by ~0.1-0.7 (checked).
TOL = 1e-5
# Through a deep net those ulps add up: ResNet-18's output and gradients of one step differ by up to ~1e-5 of their
# scale, the order by which one process differs from itself with 1 vs 2 threads (another summation order); 1e-4
# of each tensor's scale bounds that. One step only: training amplifies rounding differences chaotically, so after a few
# more steps two runs differ by far more (within one process too, with another thread count) and no tolerance
# derived from rounding would hold.
DEEP_RTOL = 1e-4


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.frozen = FrozenBatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 5)
        self.bn1d = nn.BatchNorm1d(5, momentum=None)  # cumulative average: the other running-stats rule

    def forward(self, x):
        return self.bn1d(self.fc(self.frozen(self.bn(self.conv(x)).relu()).flatten(1)))


def _small():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    return _Net(), torch.randn(8, 3, 8, 8, generator=g) * 3 + 1, torch.randn(8, 5, generator=g), "mse"


def _resnet():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    # 32 px: layer4 sees 1x1 maps, 16 values per channel over the batch, 8 per worker
    return (torchvision.models.resnet18(num_classes=3), torch.randn(16, 3, 32, 32, generator=g),
            torch.randint(0, 3, (16,), generator=g), "ce")


SETUPS = {"small": _small, "resnet": _resnet}


def _step(net, x, y, loss: str) -> dict:
    """One SGD step: its output, the input's and the parameters' gradients, the parameters and buffers after it."""
    x = x.clone().requires_grad_(True)
    out = net(x)
    (nn.functional.mse_loss(out, y) if loss == "mse" else nn.functional.cross_entropy(out, y)).backward()
    torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9).step()
    module = getattr(net, "module", net)
    return {"out": out.detach(), "x.grad": x.grad, **{f"{k}.grad": p.grad for k, p in module.named_parameters()},
            **{k: v.detach().clone() for k, v in module.state_dict().items()}}


def _worker(rank: int, init: str, setup: str, sync: bool, path: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        net, x, y, loss = SETUPS[setup]()
        if sync:
            assert sync_batchnorm(net, torch.device("cpu")) > 0
        # each worker half the batch, as DistributedSampler splits it
        torch.save(_step(nn.parallel.DistributedDataParallel(net), x[rank::2], y[rank::2], loss), f"{path}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def _one_and_two(tmp_path, setup: str, sync: bool = True) -> tuple[dict, dict]:
    one = _step(*SETUPS[setup]())
    torch.multiprocessing.spawn(_worker, nprocs=2, args=(f"file://{tmp_path / 'rendezvous'}", setup, sync,
                                                         str(tmp_path / "result")))
    r0, r1 = (torch.load(tmp_path / f"result.{r}") for r in (0, 1))
    two = dict(r0)
    for k in ("out", "x.grad"):  # the batch's rows back in order
        rows = torch.empty((len(r0[k]) * 2, *r0[k].shape[1:]))
        rows[0::2], rows[1::2] = r0[k], r1[k]
        # a worker's loss is the mean over half the batch, and each worker's x gets every worker's share
        two[k] = rows / (2 if k == "x.grad" else 1)
    return one, two


def _differences(one: dict, two: dict) -> dict[str, float]:
    """The largest difference of each result, relative to that result's scale."""
    assert one.keys() == two.keys()
    return {k: float((one[k].double() - two[k].double()).abs().max() / one[k].double().abs().max().clamp_min(1e-3))
            for k in one if one[k].is_floating_point()}


def test_two_workers_with_sync_batchnorm_take_the_single_process_step(tmp_path):
    one, two = _one_and_two(tmp_path, "small")
    # output, every gradient (the input's too: it carries the other worker's share), the parameters after the
    # step and the running statistics (frozen BatchNorm's included, unchanged); absolute: all O(1)
    for k in one:
        assert torch.allclose(one[k], two[k], rtol=TOL, atol=TOL), (k, (one[k] - two[k]).abs().max())


def test_without_it_each_worker_normalises_with_its_own_half(tmp_path):
    one, two = _one_and_two(tmp_path, "small", sync=False)
    # what the tolerance above must tell apart: far outside it
    assert (one["out"] - two["out"]).abs().max() > 1000 * TOL


def test_a_deep_net_takes_the_single_process_step(tmp_path):
    one, two = _one_and_two(tmp_path, "resnet")
    worst = {k: d for k, d in _differences(one, two).items() if d > DEEP_RTOL}
    assert not worst, worst


def test_conversion_keeps_frozen_and_other_batchnorm_and_shares_the_parameters(caplog):
    class FusedBN(nn.BatchNorm2d):  # a subclass that adds something (timm's BatchNormAct2d adds an activation)
        def forward(self, x):
            return super().forward(x).relu()

    net = nn.Sequential(nn.BatchNorm2d(3).eval(), FrozenBatchNorm2d(3), FusedBN(3), nn.SyncBatchNorm(3))
    weight = net[0].weight
    with caplog.at_level(logging.WARNING):
        assert sync_batchnorm(net, torch.device("cpu")) == 1
    # a BatchNorm still (models that keep BatchNorm in eval mode find it), in the mode it was, with its parameters
    assert type(net[0]) is CpuSyncBatchNorm and isinstance(net[0], nn.modules.batchnorm._BatchNorm)
    assert net[0].weight is weight and not net[0].training
    assert type(net[1]) is FrozenBatchNorm2d and type(net[2]) is FusedBN and type(net[3]) is nn.SyncBatchNorm
    assert "FusedBN" in caplog.text and "keep per-worker statistics" in caplog.text


def test_outside_a_process_group_it_is_batchnorm():
    bn = nn.BatchNorm2d(3)
    sync = CpuSyncBatchNorm.of(nn.BatchNorm2d(3))
    x = torch.randn(4, 3, 5, 5)
    assert torch.equal(bn(x), sync(x)) and torch.equal(bn.running_var, sync.running_var)
    bn.eval(), sync.eval()
    assert torch.equal(bn(x), sync(x))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_statistics_follow_batchnorm(momentum, tmp_path):
    # the rule itself, on a process group of one worker (where the synchronised path runs too)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'rv'}", rank=0, world_size=1)
    try:
        bn, sync = nn.BatchNorm2d(3, momentum=momentum), CpuSyncBatchNorm(3, momentum=momentum)
        for _ in range(3):
            x = torch.randn(4, 3, 5, 5)
            assert torch.allclose(bn(x), sync(x), atol=TOL)
        assert torch.allclose(bn.running_mean, sync.running_mean, atol=TOL)
        assert torch.allclose(bn.running_var, sync.running_var, atol=TOL)
        assert int(sync.num_batches_tracked) == 3
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("line,expected", [("", True), ("  sync_batchnorm: false\n", False)])
def test_the_job_key_reaches_every_worker(line, expected, small_mltable, tmp_path):
    from scheduler.resources import plan_group
    from scheduler.runstore import RunStore
    from tests.test_sweep import make_job

    job = make_job(small_mltable, "visionsweep:\n  workers_per_node: 2\n" + line)
    group = plan_group(job, 0, RunStore.at(tmp_path / "run"))
    assert group.workers == 2 and group.engine_workers(1, 2).sync_batchnorm is expected
