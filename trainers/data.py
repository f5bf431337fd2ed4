"""Datasets: MLTable folders and JSONL files -> validated records; image bytes through fsspec (SPEC §2).

``load_records`` reads one ``training_data`` / ``validation_data`` input. ``image_url`` may be

* relative to the JSONL file (``../images/a.png``), an absolute path, or ``file://...``;
* any fsspec URL (``az://``, ``abfs://``, ``s3://``, ``https://``, ``gs://``, ``memory://`` ...);
* ``azureml://subscriptions/.../datastores/<name>/paths/<p>`` or ``AmlDatastore://<p>``, resolved with a
  datastore map (``visionsweep.datastores`` in the job, or the YAML file named by
  ``$VISIONSWEEP_DATASTORES``): ``<name>`` -> a storage URL.

Images are read lazily while training (streamed), never copied to local disk first. Before a sweep
starts, :func:`check_images` opens every image once so that a missing or undecodable file is reported
up front, with its JSONL line, instead of failing a trial in the middle of an epoch.
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml
from PIL import Image, UnidentifiedImageError

from trainers import hyperparameters as hp
from trainers.errors import DataError
from trainers.labels import PARSERS, class_names_of

log = logging.getLogger(__name__)

MIN_TRAINING_IMAGES = 10  # §2.8: hard minimum to submit a job
FEW_SAMPLES_WARNING = 10  # §2.8: warn (not fail) below this many samples per label


@dataclass(frozen=True)
class Record:
    """One image and its parsed label; ``source`` is ``file:line`` for error messages."""

    image_url: str
    label: Any
    source: str


@dataclass
class PreparedData:
    """What every trial needs to build its datasets: records, class names and storage settings."""

    task: str
    classes: list[str]
    train: list[Record]
    valid: list[Record]
    storage_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


# --- locating and reading tables ------------------------------------------------------------

def _is_url(s: str) -> bool:
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", s))


def _join(base: str, rel: str) -> str:
    if _is_url(rel) or os.path.isabs(rel):
        return rel
    if _is_url(base):
        proto, rest = base.split("://", 1)
        return f"{proto}://{posixpath.normpath(posixpath.join(rest, rel))}"
    return os.path.normpath(os.path.join(base, rel))


def _dirname(p: str) -> str:
    if _is_url(p):
        proto, rest = p.split("://", 1)
        return f"{proto}://{posixpath.dirname(rest)}"
    return os.path.dirname(p)


def _fs_open(url: str, storage_options: Mapping[str, Mapping[str, Any]], mode: str = "rb"):
    if url.startswith("file://"):
        url = url[len("file://"):]
    if not _is_url(url):
        return open(url, mode)
    import fsspec

    proto = url.split("://", 1)[0]
    return fsspec.open(url, mode, **dict(storage_options.get(proto, {}))).open()


def _exists_dir(p: str, storage_options) -> bool:
    if _is_url(p) and not p.startswith("file://"):
        import fsspec

        proto = p.split("://", 1)[0]
        fs, path = fsspec.core.url_to_fs(p, **dict(storage_options.get(proto, {})))
        return fs.isdir(path)
    return os.path.isdir(p.removeprefix("file://"))


def table_files(path: str, storage_options=None) -> tuple[list[str], dict[str, Any]]:
    """JSONL files of a data input and its read options (MLTable folder, MLTable file or a JSONL file)."""
    storage_options = storage_options or {}
    mltable = None
    if _exists_dir(path, storage_options):
        mltable = _join(path, "MLTable")
    elif path.rstrip("/").endswith("MLTable"):
        mltable = path
    if mltable is None:
        return [path], {"encoding": "utf8", "invalid_lines": "error"}
    try:
        with _fs_open(mltable, storage_options) as f:
            doc = yaml.safe_load(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no MLTable file in this folder (expected {mltable})") from None
    except yaml.YAMLError as e:
        raise DataError(f"{mltable}: not valid YAML ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("paths"), list) or not doc["paths"]:
        raise DataError(f"{mltable}: expected a 'paths' list with at least one '- file: <jsonl>' entry")
    base = _dirname(mltable)
    files = []
    for i, entry in enumerate(doc["paths"]):
        if not isinstance(entry, dict) or "file" not in entry:
            raise DataError(f"{mltable}: paths[{i}]: expected '- file: <path to a JSONL file>', but got {entry!r}")
        files.append(_join(base, str(entry["file"])))
    opts = {"encoding": "utf8", "invalid_lines": "error"}
    for t in doc.get("transformations") or []:
        if isinstance(t, dict) and isinstance(t.get("read_json_lines"), dict):
            rjl = t["read_json_lines"]
            opts["encoding"] = rjl.get("encoding", "utf8")
            opts["invalid_lines"] = rjl.get("invalid_lines", "error")
    if opts["invalid_lines"] not in ("error", "drop"):
        raise DataError(f"{mltable}: read_json_lines.invalid_lines: expected 'error' or 'drop', "
                        f"but got {opts['invalid_lines']!r}")
    return files, opts


# --- datastore URIs -------------------------------------------------------------------------

_AZUREML = re.compile(r"^azureml://(?:.*/)?datastores/(?P<name>[^/]+)/paths/(?P<path>.*)$", re.IGNORECASE)
_AMLDS = re.compile(r"^AmlDatastore://(?P<path>.*)$", re.IGNORECASE)
DEFAULT_DATASTORES = ("default", "workspaceblobstore")


def load_datastores(job_map: Mapping[str, str] | None = None) -> dict[str, str]:
    """The datastore map: ``$VISIONSWEEP_DATASTORES`` (a YAML file of name: url), then the job's own map."""
    out: dict[str, str] = {}
    env = os.environ.get("VISIONSWEEP_DATASTORES")
    if env:
        try:
            doc = yaml.safe_load(Path(env).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise DataError(f"$VISIONSWEEP_DATASTORES={env}: cannot read the datastore map ({e})") from None
        if not isinstance(doc, dict):
            raise DataError(f"{env}: expected a mapping of datastore name -> storage URL")
        out.update({str(k): str(v) for k, v in doc.items()})
    out.update(job_map or {})
    return out


def resolve_url(url: str, base_dir: str, datastores: Mapping[str, str], where: str) -> str:
    """Turn an ``image_url`` (or data path) into a local path or an fsspec URL."""
    m = _AZUREML.match(url)
    if m or _AMLDS.match(url):
        if m:
            name, rel = m.group("name"), m.group("path")
            candidates = (name,)
        else:
            rel = _AMLDS.match(url).group("path")
            candidates = DEFAULT_DATASTORES
        for name in candidates:
            if name in datastores:
                return datastores[name].rstrip("/") + "/" + rel.lstrip("/")
        known = ", ".join(sorted(datastores)) or "none"
        raise DataError(f"{where}: image_url {url!r} names datastore {' or '.join(repr(c) for c in candidates)}, "
                        f"which is not in the datastore map (known: {known}); add it under visionsweep.datastores "
                        f"in the job or in the file named by $VISIONSWEEP_DATASTORES")
    if url.startswith("file://"):
        return url[len("file://"):]
    if _is_url(url):
        return url
    return _join(base_dir, url)


# --- records ----------------------------------------------------------------------------------

def load_records(path: str, task: str, target_column: str, datastores: Mapping[str, str] | None = None,
                 storage_options=None, warnings: list[str] | None = None) -> list[Record]:
    """Read and validate every line of a data input; errors name the file and line."""
    storage_options = storage_options or {}
    datastores = datastores or {}
    parse = PARSERS[task]
    files, opts = table_files(path, storage_options)
    records: list[Record] = []
    dropped = 0
    for file in files:
        base = _dirname(file)
        try:
            with _fs_open(file, storage_options) as f:
                text = f.read().decode(opts["encoding"].replace("utf8", "utf-8"))
        except FileNotFoundError:
            raise DataError(f"{file}: JSONL file not found (named by {path})") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{file}: not valid {opts['encoding']} text ({e.reason})") from None
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{file}:{n}"
            try:
                records.append(_record(line, where, base, parse, target_column, datastores))
            except DataError:
                if opts["invalid_lines"] == "drop":
                    dropped += 1
                    continue
                raise
    if dropped and warnings is not None:
        warnings.append(f"{path}: dropped {dropped} invalid line(s) (invalid_lines: drop)")
    return records


def _record(line: str, where: str, base: str, parse, target_column: str, datastores) -> Record:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not a valid JSON line ({e.msg} at column {e.colno}); "
                        "expected one JSON object per line") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, but got {type(obj).__name__}")
    url = obj.get("image_url")
    if not isinstance(url, str) or not url:
        raise DataError(f"{where}: expected an 'image_url' string")
    if target_column not in obj:
        raise DataError(f"{where}: missing the target column {target_column!r} (target_column_name)")
    details = obj.get("image_details")
    if details is not None and not isinstance(details, dict):
        raise DataError(f"{where}: expected image_details to be an object {{format, width, height}}")
    try:
        label = parse(obj[target_column])
    except ValueError as e:
        raise DataError(f"{where}: {target_column}: {e}") from None
    return Record(resolve_url(url, base, datastores, where), label, where)


def split_records(records: Sequence[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Deterministic random split: ``fraction`` of the records (at least one) become validation data."""
    order = np.random.default_rng(seed).permutation(len(records))
    n_valid = min(len(records) - 1, max(1, int(round(len(records) * fraction))))
    valid_idx = set(order[:n_valid].tolist())
    train = [r for i, r in enumerate(records) if i not in valid_idx]
    valid = [r for i, r in enumerate(records) if i in valid_idx]
    return train, valid


def class_list(task: str, *record_sets: Sequence[Record]) -> list[str]:
    names = {c for recs in record_sets for r in recs for c in class_names_of(task, r.label)}
    return sorted(names)


def label_counts(task: str, records: Sequence[Record]) -> Counter:
    return Counter(c for r in records for c in class_names_of(task, r.label))


# --- images -----------------------------------------------------------------------------------

def decode_image(data: bytes, where: str = "image") -> Image.Image:
    """Image file bytes -> RGB image; ``DataError`` naming ``where`` when they are not an image."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{where}: not a decodable image ({e})") from None


def read_image(url: str, storage_options=None) -> Image.Image:
    """Open an image as RGB; raises ``DataError`` naming the URL."""
    try:
        with _fs_open(url, storage_options or {}) as f:
            data = f.read()
    except (FileNotFoundError, IsADirectoryError):
        raise DataError(f"image not found: {url}") from None
    except OSError as e:  # permissions, a storage server that does not answer, ...
        raise DataError(f"cannot read image {url}: {e}") from None
    return decode_image(data, url)


def _probe(rec: Record, storage_options) -> str | None:
    try:
        with _fs_open(rec.image_url, storage_options) as f:
            img = Image.open(io.BytesIO(f.read()))
        img.draft("RGB", (64, 64))  # JPEG: decode at reduced size, enough to prove the file decodes
        img.load()
        return None
    except (FileNotFoundError, IsADirectoryError):
        return "file not found"
    except Exception as e:  # any decoder or storage error: report, do not crash
        return f"cannot decode ({type(e).__name__}: {e})"


def check_images(records: Sequence[Record], storage_options=None, mode: str = "error",
                 warnings: list[str] | None = None, threads: int = 8) -> list[Record]:
    """Open every image once. ``mode='error'`` raises listing the first offenders; ``'skip'`` drops them."""
    storage_options = storage_options or {}
    with ThreadPoolExecutor(threads) as pool:
        problems = list(pool.map(lambda r: _probe(r, storage_options), records))
    bad = [(r, p) for r, p in zip(records, problems) if p]
    if not bad:
        return list(records)
    listing = "\n".join(f"  {r.source}: {r.image_url}: {p}" for r, p in bad[:5])
    more = f"\n  ... and {len(bad) - 5} more" if len(bad) > 5 else ""
    if mode == "error":
        raise DataError(f"{len(bad)} of {len(records)} images are missing or cannot be decoded:\n{listing}{more}\n"
                        "Fix or remove those lines, or set visionsweep.bad_images: skip to drop them.")
    if warnings is not None:
        warnings.append(f"skipped {len(bad)} missing or undecodable image(s):\n{listing}{more}")
    return [r for r, p in zip(records, problems) if not p]


# --- the whole job's data ---------------------------------------------------------------------

def prepare_data(task: str, target_column: str, training_path: str, validation_path: str | None,
                 validation_fraction: float, seed: int, datastores: Mapping[str, str] | None = None,
                 storage_options=None, bad_images: str = "error") -> PreparedData:
    """Load, validate and split a job's data once, before any trial starts (§2.7, §2.8, §8.6)."""
    warnings: list[str] = []
    train = load_records(training_path, task, target_column, datastores, storage_options, warnings)
    if len(train) < MIN_TRAINING_IMAGES:
        raise DataError(f"{training_path}: training data has {len(train)} image(s); at least "
                        f"{MIN_TRAINING_IMAGES} are required")
    if validation_path:
        valid = load_records(validation_path, task, target_column, datastores, storage_options, warnings)
        if not valid:
            raise DataError(f"{validation_path}: validation data has no lines")
    else:
        train, valid = split_records(train, validation_fraction, seed)
    train = check_images(train, storage_options, bad_images, warnings)
    valid = check_images(valid, storage_options, bad_images, warnings)
    if len(train) + len(valid) < MIN_TRAINING_IMAGES or not train or not valid:
        raise DataError(f"too few readable images left ({len(train)} train, {len(valid)} validation)")
    classes = class_list(task, train, valid)
    if task == hp.MULTICLASS and len(classes) < 2:
        raise DataError(f"{training_path}: multi-class classification needs at least 2 classes, "
                        f"but the data has {classes}")
    unseen = sorted(set(class_list(task, valid)) - set(class_list(task, train)))
    if unseen:
        warnings.append(f"validation labels never seen in training: {', '.join(unseen)}")
    few = sorted(c for c, n in label_counts(task, train).items() if n < FEW_SAMPLES_WARNING)
    if few:
        warnings.append(f"labels with fewer than {FEW_SAMPLES_WARNING} training samples "
                        f"(10-15 per label recommended): {', '.join(few)}")
    for w in warnings:
        log.warning(w)
    return PreparedData(task, classes, train, valid, dict(storage_options or {}), warnings)
