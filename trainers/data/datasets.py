"""Torch datasets over records: images are read (through the node cache) when the loader asks for them."""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

from PIL import Image
from torch.utils.data import Dataset

from trainers.data.draws import sample_draws, split_key
from trainers.data.images import ImageStore, decode_image, map_threads
from trainers.data.tables import Record
from trainers.errors import DataError

log = logging.getLogger(__name__)
SKIP_TRIES = 16  # under bad_images: skip, how many other records may stand in for a broken one

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

    The job's image check reads headers only (``trainers.data.images.check_images``), so an image whose body is
    broken is found here: under ``bad_images: error`` the trial fails naming its JSONL line; under ``skip`` the
    next readable record stands in for it and a warning naming the line is logged once per process.

    An index may be a :class:`trainers.data.draws.SampleKey` (what the training sampler yields): the sample's
    random draws (augmentation) then come from its own seed, whichever process makes it.
    """

    def __init__(self, records: Sequence[Record], item: MakeItem, store: ImageStore | None = None, views: int = 1):
        self.records, self.item, self.views = list(records), item, max(1, int(views))
        self.store = store or ImageStore()
        self._skipped: set[str] = set()

    def __len__(self) -> int:
        return len(self.records) * self.views

    def _bytes(self, i: int) -> bytes | DataError:
        r = self.records[i // self.views]
        try:
            return self.store.read(r.image_url, r.source)
        except DataError as e:  # decided in _item, where decoding errors are decided too
            return e

    def _item(self, i: int, data: bytes | DataError, seed: int | None = None):
        with sample_draws(seed):
            for attempt in range(SKIP_TRIES + 1):
                r = self.records[i // self.views]
                try:
                    if isinstance(data, DataError):
                        raise data
                    return self.item(decode_image(data, f"{r.source}: {r.image_url}"), r, i % self.views)
                except DataError as e:
                    if self.store.bad_images != "skip" or attempt == SKIP_TRIES or len(self.records) < 2:
                        raise
                    if r.image_url not in self._skipped:
                        self._skipped.add(r.image_url)
                        log.warning("bad_images: skip: %s; another image stands in for it", e)
                    i = (i + self.views) % len(self)
                    data = self._bytes(i)

    def __getitem__(self, key):
        i, seed = split_key(key)
        return self._item(i, self._bytes(i), seed)

    def __getitems__(self, keys: Sequence) -> list:
        split = [split_key(k) for k in keys]
        blobs = map_threads(self._bytes, [i for i, _ in split])
        return [self._item(i, b, seed) for (i, seed), b in zip(split, blobs)]
