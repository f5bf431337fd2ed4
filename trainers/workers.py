"""Where one copy of the training loop runs: its rank in a data-parallel group, its device and precision.

The engine and the tasks share this: the engine owns the loop, a task owns what a batch and an
evaluation mean, and both need to know whether to gather across workers, which device to use and
whether to autocast. ``world == 1`` is a plain single-process trial; otherwise ``torch.distributed``
is initialised (Ray Train does it) and the engine wraps the model in DDP (its BatchNorm layers made
SyncBatchNorm first, unless ``sync_batchnorm`` is off).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Workers:
    """This worker's rank among ``world`` workers, the CUDA speed-ups it may use, and whether BatchNorm uses
    the whole group's statistics."""

    rank: int = 0
    world: int = 1
    amp: bool = True  # autocast (bf16 / fp16) on CUDA
    channels_last: bool = True  # NHWC memory format on CUDA
    sync_batchnorm: bool = True  # SyncBatchNorm in a data-parallel group (trainers.batchnorm)

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def all_gather(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            torch.distributed.all_reduce(t)
        return t


SINGLE = Workers()


@dataclass(frozen=True)
class Runtime:
    """The device, the autocast dtype (None: full precision) and the memory format of one worker."""

    device: torch.device
    workers: Workers = SINGLE
    amp: torch.dtype | None = None
    memory_format: torch.memory_format = field(default=torch.contiguous_format)

    @classmethod
    def of(cls, device: torch.device, workers: Workers = SINGLE, channels_last_ok: bool = True) -> "Runtime":
        amp = None
        if device.type == "cuda" and workers.amp:
            amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        fmt = (torch.channels_last if device.type == "cuda" and workers.channels_last and channels_last_ok
               else torch.contiguous_format)
        return cls(device, workers, amp, fmt)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else contextlib.nullcontext()


def interleave(chunks: list[torch.Tensor]) -> torch.Tensor:
    """Undo the rank::world split of a validation set: row i of the set is row i // world of chunk i % world."""
    if len(chunks) == 1:
        return chunks[0]
    total = sum(len(c) for c in chunks)
    out = chunks[0].new_empty((total, *chunks[0].shape[1:]))
    for r, c in enumerate(chunks):
        out[r::len(chunks)] = c
    return out
