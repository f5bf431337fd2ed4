"""Weights stores: ``visionsweep weights pull`` fills one, ``visionsweep weights verify`` checks one.

A store is a folder or a storage URL (``az://``, ``s3://`` ...) holding each model's weights under the
manifest's file name, plus ``visionsweep-weights.json``: per file its SHA-256, size, origin and the model
names it serves. Pull it on a machine with internet (or from one whose caches hold the files), copy or sync it
where an air-gapped cluster can read it, and name it in ``visionsweep.weights_store`` or
``$VISIONSWEEP_WEIGHTS_STORE``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable

from trainers.data.storage import call_with_retries, filesystem, scrub_secrets
from trainers.data.urls import is_remote, join
from trainers.errors import VisionsweepError
from trainers.models.weights import ultralytics
from trainers.models.weights import verify as check
from trainers.models.weights.initial import InitialWeights
from trainers.models.weights.manifest import HASH_IN_NAME, WeightsEntry
from trainers.models.weights.sources import SOURCES, WeightsConfig, WeightsError, _transfer_callback, locate
from trainers.progress import Progress

log = logging.getLogger("trainers.models.weights")


def pull(entries: Iterable[WeightsEntry], to: str, cfg: WeightsConfig, echo=print) -> dict[str, Any]:
    """Put each entry's files into the store ``to``: from this machine's caches, else from the origin; every
    file checked against its published hash first. Files already there (and matching) are kept."""
    index = check.read_store_index(to, cfg.storage_options)
    source_cfg = replace(cfg, store=None)  # never pull a store from itself
    done = []
    for e in entries:
        kept = _present(e, to, cfg, index)
        if kept is not None:  # indexed too: a store filled by hand, or by a copy, gets its index this way
            _index(index, e, Path(kept.path), kept.sha256 if not e.folder else None, source_cfg, keep_pulled=True)
            echo(f"kept   {e.file}  ({e.label}: already in the store, hash checked)")
            done.append(e.file)
            continue
        found, looked = locate(e, source_cfg)
        if found is None:
            raise WeightsError(f"{e.label}: {e.file} could not be had; looked in " + "; ".join(looked))
        e = found.entry or e  # an alternative's file (a yolov5 zoo checkpoint) goes in under its own name
        src = next(s for s in SOURCES if s.name == found.source)
        init = src.fetch(e, found, source_cfg)
        for f in _files(e, Path(init.path)):
            _upload(f, join(to, e.file + f.name if e.folder else e.file), cfg)
        _index(index, e, Path(init.path), None, source_cfg)
        echo(f"pulled {e.file}  ({e.label} from {found.detail or found.source}: {_short(found.where)})")
        done.append(e.file)
    _write_index(to, index, cfg)
    return {"store": to, "files": done}


def _files(e: WeightsEntry, path: Path) -> list[Path]:
    """The files of an entry at ``path`` on this machine (a Hugging Face folder's weights and configs)."""
    return check.weight_files(path) + _configs(str(path)) if e.folder else [path]


def _index(index: dict[str, Any], e: WeightsEntry, path: Path, sha: str | None, cfg: WeightsConfig,
           keep_pulled: bool = False) -> None:
    """Record ``e``'s files (a local copy at ``path``) in the store's index: SHA-256, size, origin, the models it
    serves; ``keep_pulled``: a file already there keeps the time it was pulled."""
    for f in _files(e, path):
        rel = e.file + f.name if e.folder else e.file
        before = index.get(rel, {})
        index[rel] = {"sha256": sha or check.sha256_cached(f, cfg.weights_cache), "size": f.stat().st_size,
                      "origin": e.origin, "weights": e.weights, "models": sorted({*before.get("models", []), e.label}),
                      "pulled": before.get("pulled") if keep_pulled and before.get("pulled") else
                      time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _configs(folder: str) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix == ".json" and p.is_file())


def _short(where: str) -> str:
    return scrub_secrets(where)


def _present(e: WeightsEntry, to: str, cfg: WeightsConfig, index: dict[str, Any]) -> InitialWeights | None:
    """The store's copy of the entry when it holds one that matches (checked on a local copy for a remote store:
    ``path`` is that copy), else None."""
    from trainers.models.weights.sources import Store

    in_store = replace(cfg, store=to)
    found = Store().find(e, in_store)
    if found is None:
        return None
    try:
        return Store().fetch(e, found, in_store)
    except check.HashMismatch as err:
        log.warning("%s: replaced (%s)", e.file, err)
        return None


def _upload(local: Path, url: str, cfg: WeightsConfig) -> None:
    if not is_remote(url):
        dest = Path(url.removeprefix("file://"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".pull-")
        os.close(fd)
        import shutil

        shutil.copyfile(local, tmp)
        os.replace(tmp, dest)
        return

    fs, path = filesystem(url, cfg.storage_options)
    # a copy to a local store is quick; an upload of hundreds of MB to a bucket is not
    with Progress(f"uploading {local.name}", local.stat().st_size, "bytes") as progress:
        call_with_retries(lambda: fs.put_file(str(local), path, callback=_transfer_callback(progress)), url, fs,
                          cfg.storage_options)


def _write_index(to: str, index: dict[str, Any], cfg: WeightsConfig) -> None:
    doc = {"format": 1, "written_by": "visionsweep weights pull", "files": dict(sorted(index.items()))}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    try:
        _upload(Path(f.name), join(to, check.STORE_INDEX), cfg)
    finally:
        os.unlink(f.name)


def verify_store(store: str, cfg: WeightsConfig, echo=print) -> dict[str, list[str]]:
    """Check every weights file of a store against its published hash (the SHA-256 prefix in a torchvision or
    OpenMMLab file name) and the store's index; ``VisionsweepError`` listing the files that fail."""
    index = check.read_store_index(store, cfg.storage_options)
    result: dict[str, list[str]] = {"ok": [], "mismatch": [], "unchecked": []}
    files = _list(store, cfg)
    if not files:
        raise VisionsweepError(f"{store}: no weights files there (expected files under the manifest's names: "
                               "visionsweep weights list)")
    for rel in files:
        prefix_m = HASH_IN_NAME.search(rel.rsplit("/", 1)[-1])
        prefix = prefix_m.group(1) if prefix_m and prefix_m.group(1) else None
        recorded = (index.get(rel) or {}).get("sha256")
        known = ultralytics.known_releases(rel) if "/" not in rel else {}  # YOLOv5 releases: known hashes
        if not prefix and not recorded and not known:
            result["unchecked"].append(rel)
            echo(f"unchecked  {rel}  (no hash published in its name, none recorded in {check.STORE_INDEX})")
            continue
        sha = _sha_of(join(store, rel), cfg)
        if known and not recorded:
            if sha in known:
                result["ok"].append(rel)
                echo(f"ok         {rel}  (sha256 {sha[:16]}…, the {known[sha]} release)")
            else:
                result["unchecked"].append(rel)
                echo(f"unchecked  {rel}  (sha256 {sha[:16]}… is no release known here, none recorded in "
                     f"{check.STORE_INDEX})")
            continue
        bad = [what for what, want in (("the prefix in its name", prefix), ("the store's index", recorded))
               if want and not sha.startswith(want)]
        if bad:
            result["mismatch"].append(rel)
            echo(f"MISMATCH   {rel}  (sha256 {sha[:16]}… does not match {' and '.join(bad)})")
        else:
            result["ok"].append(rel)
            echo(f"ok         {rel}  (sha256 {sha[:16]}…)")
    if result["mismatch"]:
        raise VisionsweepError(f"{store}: {len(result['mismatch'])} of {len(files)} weights files do not match their "
                               f"published hash: {', '.join(result['mismatch'])}")
    return result


def _list(store: str, cfg: WeightsConfig) -> list[str]:
    skip = (check.STORE_INDEX,)
    if not is_remote(store):
        root = Path(store.removeprefix("file://"))
        if not root.is_dir():
            raise VisionsweepError(f"{store}: not a folder")
        return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                      if p.is_file() and p.name not in skip and not p.name.startswith("."))

    fs, path = filesystem(store, cfg.storage_options)
    found = call_with_retries(lambda: fs.find(path), store, fs, cfg.storage_options)
    base = path.rstrip("/") + "/"
    return sorted(p[len(base):] for p in found if p.startswith(base) and p.rsplit("/", 1)[-1] not in skip)


def _sha_of(url: str, cfg: WeightsConfig) -> str:
    if not is_remote(url):
        return check.sha256_file(url.removeprefix("file://"))

    fs, path = filesystem(url, cfg.storage_options)
    with tempfile.TemporaryDirectory(prefix="visionsweep-verify-") as d:
        local = Path(d) / "f"
        call_with_retries(lambda: fs.get_file(path, str(local)), url, fs, cfg.storage_options)
        return check.sha256_file(local)
