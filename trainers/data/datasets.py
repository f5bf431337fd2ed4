"""Torch datasets over records: images are read (through the node cache) when the loader asks for them."""

from __future__ import annotations

from typing import Any, Sequence

from torch.utils.data import Dataset

from trainers.data.images import ImageStore, decode_image, map_threads
from trainers.data.tables import Record


class ImageDataset(Dataset):
    """Records -> (image tensor, target).

    ``__getitems__`` (which the DataLoader calls with a whole batch of indices) reads the batch's
    images concurrently, so a batch waits for the slowest read, not for the sum of them; with
    DataLoader workers the next batches are read ahead the same way while the model trains.
    """

    def __init__(self, records: Sequence[Record], task: Any, transform, store: ImageStore | None = None):
        self.records, self.task, self.transform = list(records), task, transform
        self.store = store or ImageStore()

    def __len__(self) -> int:
        return len(self.records)

    def _bytes(self, i: int) -> bytes:
        r = self.records[i]
        return self.store.read(r.image_url, r.source)

    def _item(self, i: int, data: bytes):
        r = self.records[i]
        return self.transform(decode_image(data, f"{r.source}: {r.image_url}")), self.task.target(r.label)

    def __getitem__(self, i: int):
        return self._item(i, self._bytes(i))

    def __getitems__(self, indices: Sequence[int]) -> list:
        blobs = map_threads(self._bytes, list(indices))
        return [self._item(i, b) for i, b in zip(indices, blobs)]
