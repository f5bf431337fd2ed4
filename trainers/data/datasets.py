"""Torch datasets over records: images are read (through the node cache) when the loader asks for them."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from PIL import Image
from torch.utils.data import Dataset

from trainers.data.images import ImageStore, decode_image, map_threads
from trainers.data.tables import Record

# (decoded image, its record, which view of it) -> one sample; the task decides what a sample is
MakeItem = Callable[[Image.Image, Record, int], Any]


class ImageDataset(Dataset):
    """Records -> samples made by the task's ``item`` function.

    ``views`` > 1 gives every image several samples (index ``i`` is view ``i % views`` of record
    ``i // views``): small-object tiling trains on the full image and each of its tiles this way,
    with the tile chosen once the image's size is known.

    ``__getitems__`` (which the DataLoader calls with a whole batch of indices) reads the batch's
    images concurrently, so a batch waits for the slowest read, not for the sum of them; with
    DataLoader workers the next batches are read ahead the same way while the model trains.
    """

    def __init__(self, records: Sequence[Record], item: MakeItem, store: ImageStore | None = None, views: int = 1):
        self.records, self.item, self.views = list(records), item, max(1, int(views))
        self.store = store or ImageStore()

    def __len__(self) -> int:
        return len(self.records) * self.views

    def _bytes(self, i: int) -> bytes:
        r = self.records[i // self.views]
        return self.store.read(r.image_url, r.source)

    def _item(self, i: int, data: bytes):
        r = self.records[i // self.views]
        return self.item(decode_image(data, f"{r.source}: {r.image_url}"), r, i % self.views)

    def __getitem__(self, i: int):
        return self._item(i, self._bytes(i))

    def __getitems__(self, indices: Sequence[int]) -> list:
        blobs = map_threads(self._bytes, list(indices))
        return [self._item(i, b) for i, b in zip(indices, blobs)]
