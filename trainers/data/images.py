"""Image bytes for training, checks and serving: storage -> node cache -> decoded RGB images (SPEC §11.2).

An :class:`ImageStore` is the picklable description of how a process reads a job's images: the
per-protocol storage options, the node-local cache settings and whether images stream. Each process
opens the node's cache lazily, so trials on one node share one cache whatever process they run in.

* Local paths are read directly: caching them would only copy the disk to itself.
* Remote URLs go through the cache (``trainers.data.cache``): a hit is a local read; a miss fetches
  the object (with retries, ``trainers.data.storage``) and keeps it when the cache has room.
* Without ``stream_image_files``, :meth:`ImageStore.materialize` downloads the job's images into the
  cache once per node, in parallel, before the first trial on that node trains.
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from PIL import Image, UnidentifiedImageError

from trainers.data import storage
from trainers.data.cache import NodeCache
from trainers.data.urls import is_remote
from trainers.errors import DataError, ImageNotFound

log = logging.getLogger(__name__)

IO_THREADS = 16  # concurrent storage requests of one process: latency-bound, not CPU-bound


# The most pixels an image of the training data may declare: what PIL itself refuses (twice its warning limit).
# Serving caps requests lower (serving.schema.MAX_IMAGE_PIXELS): the same check, a smaller number.
TRAINING_MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS


class ImageTooLarge(DataError):
    """An image that declares more pixels than the cap (a decompression bomb; a 413 when served)."""


def decode_image(data: bytes, where: str = "image", max_pixels: int = TRAINING_MAX_PIXELS,
                 cap_name: str = "trainers.data.images.TRAINING_MAX_PIXELS") -> Image.Image:
    """Image file bytes -> RGB image; ``DataError`` naming ``where`` when they are not an image, and
    ``ImageTooLarge`` when they declare more than ``max_pixels`` pixels.

    The one decoder of training data and served requests, with one policy for decompression bombs: the size is
    read from the header and checked before any pixel is decoded (a few kB of PNG can declare 20000 x 20000
    pixels, 1.2 GB as RGB). PIL's own guard (``Image.MAX_IMAGE_PIXELS``) only warns below twice its limit and is
    process-wide, so the cap is a parameter here.
    """
    too_large = f"at most {max_pixels} pixels are decoded ({cap_name})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # PIL refuses twice its limit before we can look at the size
        declared = re.search(r"\d+ pixels", str(e))
        raise ImageTooLarge(f"{where}: too many pixels: {declared.group(0) if declared else 'more than PIL decodes'} "
                            f"declared; {too_large}") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{where}: not a decodable image ({e})") from None
    width, height = img.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"{where}: too many pixels: {width} x {height} = {width * height} pixels; {too_large}")
    try:
        img.load()
        return img.convert("RGB")
    except (OSError, ValueError) as e:
        raise DataError(f"{where}: not a decodable image ({e})") from None


@dataclass(frozen=True)
class ImageStore:
    """How to read a job's images in any process on any node (picklable; no open handles)."""

    storage_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache_dir: str | None = None
    cache_max_bytes: int = 0
    stream: bool = False

    def cache(self):
        if not self.cache_dir or self.cache_max_bytes <= 0:
            return None
        return NodeCache.open(self.cache_dir, self.cache_max_bytes)

    def read(self, url: str, where: str | None = None) -> bytes:
        """The bytes of one image; ``DataError`` naming the object (and ``where``, its JSONL line)."""
        if not is_remote(url):  # local files are read directly: caching them would copy the disk to itself
            return storage.read_bytes(url, where=where)
        fetch = lambda: storage.read_bytes(url, self.storage_options, where=where)  # noqa: E731
        cache = self.cache()
        return fetch() if cache is None else cache.get(url, fetch)

    def image(self, url: str, where: str | None = None) -> Image.Image:
        return decode_image(self.read(url, where), url if where is None else f"{where}: {url}")

    def materialize(self, urls: Sequence[str], threads: int = IO_THREADS) -> None:
        """Download every remote image into this node's cache once (the non-streaming mode of §11.2)."""
        cache = self.cache()
        remote = sorted({u for u in urls if is_remote(u)})
        if cache is None or not remote:
            return
        cache.fill(remote, lambda u: storage.read_bytes(u, self.storage_options), threads)


def read_image(url: str, storage_options=None) -> Image.Image:
    """Open one image as RGB without a cache (serving, ``predict``); ``DataError`` naming the URL."""
    return ImageStore(dict(storage_options or {})).image(url)


def _probe(store: ImageStore, url: str, where: str) -> tuple[str | None, int]:
    """``(problem or None, size in bytes)``: the image is read (filling the cache) and its header decoded."""
    try:
        data = store.read(url, where)
    except ImageNotFound:
        return "file not found", 0
    # any other DataError is storage-wide (credentials, endpoint): one error, not a list of images
    try:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (64, 64))  # JPEG: decode at reduced size, enough to prove the file decodes
        img.load()
        return None, len(data)
    except Exception as e:  # any decoder error: report, do not crash
        return f"cannot decode ({type(e).__name__}: {e})", len(data)


def check_images(records: Sequence[Any], store: ImageStore | None = None, mode: str = "error",
                 warnings: list[str] | None = None, threads: int = IO_THREADS,
                 sizes: dict[str, int] | None = None) -> list[Any]:
    """Read every image once, in parallel (through the cache: no second download later).

    ``mode='error'`` raises listing the first offenders; ``'skip'`` drops them. ``sizes`` collects
    each image's size in bytes, for the does-it-fit check of the non-streaming mode.
    """
    store = store if isinstance(store, ImageStore) else ImageStore(dict(store or {}))
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda r: _probe(store, r.image_url, r.source), records))
    if sizes is not None:
        sizes.update({r.image_url: n for r, (_, n) in zip(records, results)})
    bad = [(r, p) for r, (p, _) in zip(records, results) if p]
    if not bad:
        return list(records)
    listing = "\n".join(f"  {r.source}: {r.image_url}: {p}" for r, p in bad[:5])
    more = f"\n  ... and {len(bad) - 5} more" if len(bad) > 5 else ""
    if mode == "error":
        raise DataError(f"{len(bad)} of {len(records)} images are missing or cannot be decoded:\n{listing}{more}\n"
                        "Fix or remove those lines, or set visionsweep.bad_images: skip to drop them.")
    if warnings is not None:
        warnings.append(f"skipped {len(bad)} missing or undecodable image(s):\n{listing}{more}")
    return [r for r, (p, _) in zip(records, results) if not p]


_POOL: tuple[int, ThreadPoolExecutor] | None = None


def map_threads(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``fn`` over ``items`` on this process's I/O thread pool, in order (a batch's storage reads together)."""
    global _POOL
    if len(items) <= 1:
        return [fn(x) for x in items]
    if _POOL is None or _POOL[0] != os.getpid():  # DataLoader workers are forked: each needs its own pool
        _POOL = (os.getpid(), ThreadPoolExecutor(IO_THREADS, thread_name_prefix="visionsweep-io"))
    return list(_POOL[1].map(fn, items))


def default_cache_dir() -> str:
    return os.environ.get("VISIONSWEEP_CACHE_DIR") or os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                                   "visionsweep-cache")
