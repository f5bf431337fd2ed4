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
import shutil
import socket
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from PIL import Image, UnidentifiedImageError

from trainers.data import storage
from trainers.data.cache import NodeCache, ledger_bytes
from trainers.data.urls import is_remote
from trainers.errors import DataError, ImageNotFound
from trainers.progress import Progress, human_size  # noqa: F401 - human_size: this module's name for it too

log = logging.getLogger(__name__)

IO_THREADS = 16  # concurrent storage requests of one process: latency-bound, not CPU-bound


# The most pixels an image of the training data may declare: what PIL itself refuses (twice its warning limit).
# Serving caps requests lower (serving.schema.MAX_IMAGE_PIXELS): the same check, a smaller number.
TRAINING_MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS


class ImageTooLarge(DataError):
    """An image that declares more pixels than the cap (a decompression bomb; a 413 when served)."""


def open_image(data: bytes, where: str = "image", max_pixels: int = TRAINING_MAX_PIXELS,
               cap_name: str = "trainers.data.images.TRAINING_MAX_PIXELS") -> Image.Image:
    """Image file bytes -> an opened image whose header was read and whose size was checked, no pixel decoded:
    ``DataError`` naming ``where`` when they are not an image, ``ImageTooLarge`` when they declare more than
    ``max_pixels`` pixels.

    The one decompression-bomb policy of training data, served requests and the pre-sweep header check: the size
    is read from the header and checked before any pixel is decoded (a few kB of PNG can declare 20000 x 20000
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
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{where}: not a decodable image ({e})") from None
    width, height = img.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"{where}: too many pixels: {width} x {height} = {width * height} pixels; {too_large}")
    return img


def decode_image(data: bytes, where: str = "image", max_pixels: int = TRAINING_MAX_PIXELS,
                 cap_name: str = "trainers.data.images.TRAINING_MAX_PIXELS") -> Image.Image:
    """Image file bytes -> RGB image (:func:`open_image`'s checks, then the pixels); ``DataError`` naming
    ``where`` when they are not a decodable image."""
    img = open_image(data, where, max_pixels, cap_name)
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
    cache_max_bytes: int | None = 0  # None: sized to the disk of each node (disk_budget); 0: no cache
    stream: bool = False
    bad_images: str = "error"  # what a trial does with an image that cannot be read or decoded (error | skip)

    def cache(self):
        if not self.cache_dir:
            return None
        limit = self.cache_limit()
        return NodeCache.open(self.cache_dir, limit) if limit > 0 else None

    def cache_limit(self) -> int:
        """The node cache's size bound on this node: ``cache_max_bytes`` when the job sets one (``None``: what
        this node's disk can hold, :func:`disk_budget`)."""
        return disk_budget(self.cache_dir) if self.cache_max_bytes is None else int(self.cache_max_bytes)

    def read(self, url: str, where: str | None = None) -> bytes:
        """The bytes of one image; ``DataError`` naming the object (and ``where``, its JSONL line)."""
        if not is_remote(url):  # local files are read directly: caching them would copy the disk to itself
            return storage.read_bytes(url, where=where)
        fetch = lambda: storage.read_bytes(url, self.storage_options, where=where)  # noqa: E731
        cache = self.cache()
        return fetch() if cache is None else cache.get(url, fetch)

    def image(self, url: str, where: str | None = None) -> Image.Image:
        return decode_image(self.read(url, where), url if where is None else f"{where}: {url}")

    def materialize(self, urls: Sequence[str], threads: int = IO_THREADS, total_bytes: int = 0) -> None:
        """Download every remote image into this node's cache once (the non-streaming mode of §11.2).

        ``total_bytes`` (the remote images' size, from the job's check) is compared with what this node's cache
        can hold first: a ``DataError`` saying how much is missing, rather than a disk filled to the last byte.
        """
        remote = sorted({u for u in urls if is_remote(u)})
        if not self.cache_dir or not remote:
            return
        limit = self.cache_limit()
        if total_bytes > limit:
            where = f"{self.cache_dir} on {socket.gethostname()}"
            if self.cache_max_bytes is None:
                room = (f"the node cache at {where} can hold {human_size(limit)} (the disk's free space "
                        f"and what the cache holds now, less {human_size(DISK_RESERVE_BYTES)} kept free)")
                fix = "Free disk space there or point visionsweep.cache.dir at a larger disk"
            else:
                room = f"the node cache at {where} is limited to {human_size(limit)} (visionsweep.cache.max_size_gb)"
                fix = "Raise visionsweep.cache.max_size_gb"
            raise DataError(f"the job's images take {human_size(total_bytes)} and {room}: "
                            f"{human_size(total_bytes - limit)} missing to download them before training "
                            f"(§11.2). {fix}, or set advanced_settings {{\"stream_image_files\": true}} to read "
                            "them from storage while training")
        cache = self.cache()
        if cache is None:
            return
        cache.fill(remote, lambda u: storage.read_bytes(u, self.storage_options), threads)


def read_image(url: str, storage_options=None) -> Image.Image:
    """Open one image as RGB without a cache (serving, ``predict``); ``DataError`` naming the URL."""
    return ImageStore(dict(storage_options or {})).image(url)


HEAD_BYTES = 16 * 1024  # the first read of an image check: PNG's size is at byte 16, a JPEG's SOF usually well inside
HEAD_MAX_BYTES = 1024 * 1024  # ... grown (x4) up to this when the header goes on (a JPEG's EXIF and ICC segments)


def _probe(store: ImageStore, url: str, where: str) -> tuple[str | None, int]:
    """``(problem or None, size in bytes)`` from the image's header alone: it exists, is an image format PIL
    reads, and declares a size we decode. The body is read by the trials (a broken one is handled there).

    Why not the whole image: the check runs on the driver's node before any trial, and a dataset too large to
    download (the streaming mode) must not be downloaded here. A header costs one HEAD and one ranged GET of
    ``HEAD_BYTES`` (more only for headers that go on), whatever the image's size.
    """
    n = HEAD_BYTES
    while True:
        try:
            head, size = storage.read_head(url, n, store.storage_options, where)
        except ImageNotFound:
            return "file not found", 0
        # any other DataError is storage-wide (credentials, endpoint): one error, not a list of images
        try:
            open_image(head, "header")
            return None, size
        except ImageTooLarge as e:
            return str(e).removeprefix("header: "), size
        except DataError as e:
            if len(head) < size and n < HEAD_MAX_BYTES:  # the header may go on past what was read
                n *= 4
                continue
            return "cannot decode: " + str(e).removeprefix("header: "), size


def check_images(records: Sequence[Any], store: ImageStore | None = None, mode: str = "error",
                 warnings: list[str] | None = None, threads: int = IO_THREADS,
                 sizes: dict[str, int] | None = None, what: str = "image") -> list[Any]:
    """Check every image's header, in parallel, before any trial (the bodies are the trials' to read).

    ``mode='error'`` raises listing the first offenders; ``'skip'`` drops them. ``sizes`` collects
    each image's size in bytes, for the does-it-fit check of the non-streaming mode. ``what`` names the images
    in the progress line (``training image``).
    """
    store = store if isinstance(store, ImageStore) else ImageStore(dict(store or {}))
    first: dict[str, str] = {}  # an image named by several lines is checked once, errors naming its first line
    for r in records:
        first.setdefault(r.image_url, r.source)
    # remote headers on threads (each is two round trips of latency); local ones in this thread: a local header
    # costs ~35 us of Python, and threads contending for the GIL made that ~120 us
    remote = [u for u in first if is_remote(u)]

    def probe(u: str, where: str) -> tuple[str | None, int]:
        out = _probe(store, u, where)
        progress.update(1)
        return out

    # tens of thousands of remote headers take minutes: say how far along (nothing when it is quick)
    with Progress(f"checking {what} headers", len(first)) as progress:
        with ThreadPoolExecutor(threads) as pool:
            found = dict(zip(remote, pool.map(lambda u: probe(u, first[u]), remote)))
        found.update((u, probe(u, where)) for u, where in first.items() if u not in found)
    if sizes is not None:
        sizes.update({u: n for u, (_, n) in found.items()})
    bad = [(r, found[r.image_url][0]) for r in records if found[r.image_url][0]]
    if not bad:
        return list(records)
    listing = "\n".join(f"  {r.source}: {r.image_url}: {p}" for r, p in bad[:5])
    more = f"\n  ... and {len(bad) - 5} more" if len(bad) > 5 else ""
    if mode == "error":
        raise DataError(f"{len(bad)} of {len(records)} images are missing or cannot be decoded:\n{listing}{more}\n"
                        "Fix or remove those lines, or set visionsweep.bad_images: skip to drop them.")
    if warnings is not None:
        warnings.append(f"skipped {len(bad)} missing or undecodable image(s):\n{listing}{more}")
    return [r for r in records if not found[r.image_url][0]]


_POOL: tuple[int, ThreadPoolExecutor] | None = None


def map_threads(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``fn`` over ``items`` on this process's I/O thread pool, in order (a batch's storage reads together)."""
    global _POOL
    if len(items) <= 1:
        return [fn(x) for x in items]
    if _POOL is None or _POOL[0] != os.getpid():  # DataLoader workers are forked: each needs its own pool
        _POOL = (os.getpid(), ThreadPoolExecutor(IO_THREADS, thread_name_prefix="visionsweep-io"))
    return list(_POOL[1].map(fn, items))


DISK_RESERVE_BYTES = 2 * 2**30  # what a disk-sized cache leaves free on its disk (logs, checkpoints, temp files)
_BUDGETS: dict[tuple[int, str], int] = {}


def disk_budget(cache_dir: str) -> int:
    """Bytes a cache at ``cache_dir`` may hold on this node when the job sets no limit: the disk's free space
    plus what the cache holds now, less :data:`DISK_RESERVE_BYTES`. Measured once per process, so that every
    read of a process opens the same cache; processes started later see the same figure, as the cache's own
    bytes are counted back in."""
    key = (os.getpid(), cache_dir)  # read on every image read: no path computed on a hit
    if key not in _BUDGETS:
        probe = root = os.path.abspath(cache_dir)
        while not os.path.exists(probe) and probe != os.path.dirname(probe):
            probe = os.path.dirname(probe)
        held = ledger_bytes(root) or 0
        _BUDGETS[key] = max(0, shutil.disk_usage(probe).free + held - DISK_RESERVE_BYTES)
    return _BUDGETS[key]


def default_cache_dir() -> str:
    return os.environ.get("VISIONSWEEP_CACHE_DIR") or os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                                   "visionsweep-cache")
