"""BatchNorm statistics shared by the workers of a data-parallel trial (SyncBatchNorm).

Under DDP each worker's BatchNorm normalises with the statistics of its own part of the batch, so a group of
``W`` workers with ``training_batch_size`` ``B`` does not take the steps one worker takes with ``W x B``.
:func:`sync_batchnorm` replaces every plain BatchNorm layer by one that normalises with the statistics of the
whole global batch (and updates its running statistics with them), as torchvision's training references do
with ``--sync-bn``; ``visionsweep.sync_batchnorm: false`` keeps per-worker statistics.

On GPU that layer is torch's ``nn.SyncBatchNorm``. torch refuses it on CPU (its kernels,
``torch.batch_norm_stats`` and the rest, are CUDA-only, and DDP rejects a CPU module holding one), so on CPU
(gloo) it is :class:`CpuSyncBatchNorm`, which computes the same thing from ordinary tensor operations and
``torch.distributed.all_reduce``, forward and backward as torch's CUDA kernels do: the backward pass sums
every worker's gradient of the shared mean and variance.

What is not converted: frozen BatchNorm (torchvision's ``FrozenBatchNorm2d``, which detectors built from
pretrained weights use, is not a BatchNorm subclass and keeps its fixed statistics), and subclasses of the
plain ``BatchNorm1d/2d/3d`` (e.g. a layer that fuses an activation: replacing it would drop what the subclass
adds; they keep per-worker statistics and are named in a warning). Both layers stay BatchNorm subclasses, so
a model that keeps its BatchNorm in eval mode while training (MMDetection's ``norm_eval``) still does; a layer
in eval mode normalises with its running statistics and exchanges nothing.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

log = logging.getLogger(__name__)

_PLAIN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class CpuSyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of every worker's batch together (CPU, gloo); outside an
    initialised process group, and in eval mode, it is plain BatchNorm."""

    @classmethod
    def of(cls, bn: _BatchNorm) -> "CpuSyncBatchNorm":
        """The same layer, sharing ``bn``'s parameters and buffers (an optimiser holding them keeps working)."""
        out = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                  bias=bn.bias is not None)
        if bn.affine:
            out.weight, out.bias = bn.weight, bn.bias
        out.running_mean, out.running_var = bn.running_mean, bn.running_var
        out.num_batches_tracked = bn.num_batches_tracked
        out.train(bn.training)
        if hasattr(bn, "qconfig"):
            out.qconfig = bn.qconfig
        return out

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm
                factor = 1.0 / float(self.num_batches_tracked)
        tracked = self.track_running_stats
        return _SyncBatchNormFunction.apply(input, self.weight, self.bias, self.running_mean if tracked else None,
                                            self.running_var if tracked else None, factor, self.eps)


class _SyncBatchNormFunction(torch.autograd.Function):
    """Batch normalisation of ``x`` with the mean and (biased) variance of every worker's ``x`` together.

    The sums behind the statistics are accumulated in float64 before they are added over the workers, as
    precise as a BatchNorm in one process (torch's CPU kernels accumulate in double too; a float32 sum over a
    large batch of large feature maps loses digits). Every worker calls it the same number of times (each
    layer, each training step), one with an empty ``x`` included, since each call all-reduces twice forward
    and, when its input needs a gradient, once backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, factor: float, eps: float):
        dims, shape = [0, *range(2, x.dim())], [1, -1] + [1] * (x.dim() - 2)
        sums = torch.cat([x.sum(dims, dtype=torch.float64),
                          torch.tensor([x.numel() // x.size(1)], dtype=torch.float64)])
        dist.all_reduce(sums)
        n = float(sums[-1])
        if n <= 1:  # as nn.BatchNorm: one value per channel has no variance
            raise ValueError(f"Expected more than 1 value per channel when training, got {int(n)} over all workers")
        mean = (sums[:-1] / n).to(x.dtype)
        y = x - mean.view(shape)
        squares = y.square().sum(dims, dtype=torch.float64)
        dist.all_reduce(squares)
        var = squares / n
        invstd = torch.rsqrt(var + eps).to(x.dtype)
        y.mul_(invstd.view(shape))
        if weight is not None:
            y.mul_(weight.view(shape))
        if bias is not None:
            y.add_(bias.view(shape))
        if running_mean is not None:  # nn.BatchNorm's update: the running variance is the unbiased one
            running_mean.mul_(1 - factor).add_(mean, alpha=factor)
            running_var.mul_(1 - factor).add_((var * (n / (n - 1))).to(running_var.dtype), alpha=factor)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.n = n
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, weight, mean, invstd = ctx.saved_tensors
        dims, shape = [0, *range(2, x.dim())], [1, -1] + [1] * (x.dim() - 2)
        xhat = (x - mean.view(shape)) * invstd.view(shape)
        sum_dy = dy.sum(dims, dtype=torch.float64)
        sum_dy_xhat = (dy * xhat).sum(dims, dtype=torch.float64)
        # this worker's share of the parameters' gradients: DDP averages them over the workers
        grad_weight = sum_dy_xhat.to(x.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = sum_dy.to(x.dtype) if ctx.needs_input_grad[2] else None
        grad_x = None
        if ctx.needs_input_grad[0]:  # the same on every worker (the same model), so all of them all-reduce here
            # every worker's loss depends on this worker's x through the shared mean and variance
            both = torch.cat([sum_dy, sum_dy_xhat])
            dist.all_reduce(both)
            mean_dy, mean_dy_xhat = (both / ctx.n).to(x.dtype).split(x.size(1))
            scale = invstd if weight is None else invstd * weight
            grad_x = (dy - mean_dy.view(shape) - xhat * mean_dy_xhat.view(shape)) * scale.view(shape)
        return grad_x, grad_weight, grad_bias, None, None, None, None


def sync_batchnorm(model: nn.Module, device: torch.device) -> int:
    """Replace, in place, every plain BatchNorm layer of ``model`` by one with the statistics of the whole group
    (torch's ``nn.SyncBatchNorm`` on GPU, :class:`CpuSyncBatchNorm` on CPU); returns how many were.

    Call it once ``torch.distributed`` is initialised (Ray Train does it) and before wrapping the model in DDP."""
    replaced, kept = 0, set()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in _PLAIN:
                setattr(parent, name, CpuSyncBatchNorm.of(child) if device.type == "cpu"
                        else nn.SyncBatchNorm.convert_sync_batchnorm(child))
                replaced += 1
            elif isinstance(child, _BatchNorm) and not isinstance(child, (nn.SyncBatchNorm, CpuSyncBatchNorm)):
                kept.add(type(child).__qualname__)
    if kept:
        log.warning("BatchNorm layers of type %s keep per-worker statistics (only plain BatchNorm1d/2d/3d "
                    "share the statistics of the whole group)", ", ".join(sorted(kept)))
    return replaced
