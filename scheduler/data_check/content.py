"""What each image is, read where the images are: a content hash (exact copies), its size in pixels (for the box
checks) and, where asked, a perceptual hash (near copies: re-encoded, resized, slightly cropped).

The images are read in Ray tasks on the cluster's nodes, through the job's ``ImageStore`` (its node cache, its
storage credentials), a chunk of images per task: the driver, a small CPU head, never reads an image. A task
returns 60-odd bytes per image. The perceptual hashes are ``imagehash``'s phash (DCT) and dhash (gradients), 64 bits
each: robust to resizing and re-compression.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

CHUNK = 512  # images per task: a task's start-up (~0.1 s) small beside reading them


@dataclass(frozen=True, slots=True)
class Fingerprint:
    sha256: str | None  # of the file's bytes; None: unreadable (``error``)
    width: int = 0
    height: int = 0
    phash: int | None = None  # 64-bit perceptual (DCT) hash (None: not asked for, or not decodable)
    dhash: int | None = None  # 64-bit difference hash: the second opinion on a near pair (``duplicates``)
    error: str | None = None


def fingerprint(url: str, store: Any, perceptual: bool) -> Fingerprint:
    """One image: its bytes through ``store`` (hash and header), decoded only for the perceptual hash."""
    import io

    from PIL import Image

    try:
        data = store.read(url)
    except Exception as e:  # noqa: BLE001 - an unreadable image is a finding of its own, not the end of the check
        return Fingerprint(None, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            ph = dh = None
            if perceptual:
                import imagehash

                grey = im.convert("L")
                ph, dh = int(str(imagehash.phash(grey)), 16), int(str(imagehash.dhash(grey)), 16)
    except Exception as e:  # noqa: BLE001
        return Fingerprint(digest, error=f"cannot be decoded ({type(e).__name__})")
    return Fingerprint(digest, width, height, ph, dh)


def _chunk(urls: Sequence[str], store: Any, perceptual: bool) -> list[Fingerprint]:
    return [fingerprint(u, store, perceptual) for u in urls]


def fingerprints(urls: Sequence[str], store: Any, perceptual: bool, chunk: int = CHUNK,
                 progress=None) -> dict[str, Fingerprint]:
    """Every distinct url's :class:`Fingerprint`, computed in Ray tasks (one CPU each) over chunks of ``chunk``
    urls; results are gathered as tasks finish (``progress.update(n)`` per chunk, where given)."""
    import ray

    distinct = list(dict.fromkeys(urls))
    if not distinct:
        return {}
    remote = ray.remote(num_cpus=1)(_chunk)
    store_ref = ray.put(store)
    pending = {remote.remote(distinct[i:i + chunk], store_ref, perceptual): i for i in range(0, len(distinct), chunk)}
    out: dict[str, Fingerprint] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            start = pending.pop(ref)
            part = ray.get(ref)
            out.update(zip(distinct[start:start + len(part)], part))
            if progress is not None:
                progress.update(len(part))
    return out
