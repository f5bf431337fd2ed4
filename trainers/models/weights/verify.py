"""Checking weights files against the hash their publisher gives, before any of them is loaded.

* torchvision, MMDetection and mmyolo put the first hex digits of the file's SHA-256 in its name
  (``mobilenet_v2-b0353104.pth``): torch.hub's rule, checked the same way here;
* Hugging Face hub files (timm's and transformers' weights) are LFS objects whose id is their SHA-256: the
  Hugging Face cache stores each under ``blobs/<sha256>``, and ``visionsweep weights pull`` records it in the
  store's index (``visionsweep-weights.json``) from the hub's metadata;
* ultralytics' YOLOv5 releases publish no hash: a file is accepted when its SHA-256 is one the manifest knows
  (``known_sha256``) or the one recorded in a store's index when ``weights pull`` downloaded it from its release
  URL (a node's weights cache keeps such an index too, for what it downloaded itself).

A file that matches neither is refused, naming it. Hashing a large file takes seconds, so a node remembers
the hash of a file it has checked, keyed by path, size and modification time (``<weights cache>/.verified``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

from trainers.data.storage import open_url
from trainers.data.urls import join
from trainers.errors import VisionsweepError
from trainers.models.weights.manifest import WeightsEntry

STORE_INDEX = "visionsweep-weights.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


class HashMismatch(VisionsweepError):
    """A weights file whose content is not what its publisher published."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_cached(path: str | os.PathLike, cache: Path | None) -> str:
    """The file's SHA-256, remembered per (path, size, mtime) under ``cache/.verified`` when a cache is given."""
    real = os.path.realpath(path)
    st = os.stat(real)
    stamp = None
    if cache is not None:
        key = hashlib.sha256(f"{real}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:32]
        stamp = Path(cache) / ".verified" / key
        try:
            value = stamp.read_text().strip()
            if _SHA256.match(value):
                return value
        except OSError:
            pass
    value = sha256_file(real)
    if stamp is not None:
        try:
            stamp.parent.mkdir(parents=True, exist_ok=True)
            tmp = stamp.with_suffix(f".{os.getpid()}")
            tmp.write_text(value)
            os.replace(tmp, stamp)
        except OSError:
            pass  # a read-only cache: hash again next time
    return value


def hf_blob_sha256(path: str | os.PathLike) -> str | None:
    """The SHA-256 the Hugging Face cache names a file's blob by (LFS objects), else None."""
    real = Path(os.path.realpath(path))
    return real.name if real.parent.name == "blobs" and _SHA256.match(real.name) else None


def weight_files(folder: str | os.PathLike) -> list[Path]:
    """The weight files of a Hugging Face model folder (what a hash protects; the JSON configs are small)."""
    p = Path(folder)
    return sorted(f for f in p.iterdir() if f.suffix in WEIGHT_SUFFIXES and f.is_file()) if p.is_dir() else []


def read_store_index(store: str | None, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``visionsweep-weights.json`` of a store: file -> {sha256, size, ...} (empty when there is none)."""
    if not store:
        return {}

    try:
        with open_url(join(store, STORE_INDEX), storage_options, "r") as f:
            doc = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return {}
    return doc.get("files", {}) if isinstance(doc, dict) else {}


def expected_sha256(entry: WeightsEntry, rel: str, path: str | os.PathLike,
                    index: Mapping[str, Any]) -> tuple[str | None, str]:
    """(expected full hash or prefix, where it comes from) for one file of ``entry`` (``rel``: its store name)."""
    if entry.sha256_prefix and not entry.folder:
        return entry.sha256_prefix, "the prefix published in the file name"
    recorded = (index.get(rel) or {}).get("sha256")
    if recorded:
        return recorded, "the weights store's index"
    blob = hf_blob_sha256(path)
    if blob:
        return blob, "the Hugging Face cache's blob name (the hub's LFS sha256)"
    return None, ""


def verify_entry(entry: WeightsEntry, path: str, cache: Path | None,
                 index: Mapping[str, Any] | None = None) -> str | None:
    """Check ``path`` (a file, or a Hugging Face folder's weight files) against its published hash; returns the
    weights file's SHA-256. ``HashMismatch`` names the file, what was expected and what it has."""
    index = index or {}
    if entry.folder:
        files = weight_files(path)
        if not files:
            raise HashMismatch(f"{path}: no weights file (*.safetensors / *.bin) in the folder of {entry.label}")
        shas = [_check_one(entry, entry.file + f.name, f, cache, index) for f in files]
        return shas[0] if len(shas) == 1 else None
    return _check_one(entry, entry.file, Path(path), cache, index)


def _check_one(entry: WeightsEntry, rel: str, path: Path, cache: Path | None, index: Mapping[str, Any]) -> str:
    if entry.library == "ultralytics":
        return _check_known(entry, rel, path, cache, index)
    expected, why = expected_sha256(entry, rel, path, index)
    if expected is None:
        raise HashMismatch(f"{path}: cannot check {entry.label}'s {rel}: no hash is published with it and none is "
                           f"recorded for it ({STORE_INDEX} of a store filled by `visionsweep weights pull`)")
    got = sha256_cached(path, cache)
    if not got.startswith(expected):
        raise HashMismatch(f"{path}: sha256 {got[:16]}… does not match {entry.label}'s {rel} (expected "
                           f"{expected[:16]}… from {why}); the file is damaged or not the published one")
    return got


def _check_known(entry: WeightsEntry, rel: str, path: Path, cache: Path | None, index: Mapping[str, Any]) -> str:
    """A file with no hash in its name: one of the hashes the manifest knows, or the one its store recorded."""
    got = sha256_cached(path, cache)
    recorded = (index.get(rel) or {}).get("sha256")
    if entry.release_of(got) or got == recorded:
        return got
    known = ", ".join(f"{release} {sha[:16]}…" for sha, release, _ in entry.known_sha256) or "none known"
    if recorded:
        raise HashMismatch(f"{path}: sha256 {got[:16]}… does not match {entry.label}'s {rel} (expected "
                           f"{recorded[:16]}… from the weights store's index); the file is damaged or not the one "
                           "that was pulled")
    raise HashMismatch(f"{path}: cannot check {entry.label}'s {rel}: its sha256 {got[:16]}… is not a release hash "
                       f"known here ({known}) and none is recorded for it in {STORE_INDEX}. Fill a weights store "
                       f"where there is internet (visionsweep weights pull {entry.model_name}"
                       f"{' --model-size ' + entry.variant if entry.variant else ''} --to DIR_OR_URL: it downloads "
                       f"{entry.url} and records its hash), or name the file in visionsweep.pretrained_weights to "
                       "start from it as it is")


def record(folder: Path, rel: str, info: Mapping[str, Any]) -> None:
    """Add ``rel``'s entry to the index of a local folder (a node's weights cache), replacing the file atomically;
    the caller holds the lock on the index."""
    path = Path(folder) / STORE_INDEX
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        doc = {}
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
        doc = {"format": 1, "files": {}}
    doc["files"][rel] = dict(info)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{STORE_INDEX}.{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
