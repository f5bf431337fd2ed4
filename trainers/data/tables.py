"""Data inputs: MLTable folders and JSONL files -> validated records (SPEC §2.2, §2.5, §2.7).

``load_records`` reads one ``training_data`` / ``validation_data`` input; every error names the file and line.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from trainers.data.storage import is_dir, open_url
from trainers.data.urls import dirname, join, resolve_url
from trainers.errors import DataError
from trainers.labels import PARSERS, class_names_of


@dataclass(frozen=True, slots=True)
class Record:
    """One image and its parsed label; ``source`` is ``file:line`` for error messages.

    Slotted: a job of a million lines holds a million of them (about 250 bytes each with their strings)."""

    image_url: str
    label: Any
    source: str


MLTABLE_TEMPLATE = """\
paths:
  - file: ./{name}
transformations:
  - read_json_lines:
      encoding: utf8
      invalid_lines: error
      include_path_column: false
  - convert_column_types:
      - columns: image_url
        column_type: stream_info
"""


def mltable_text(jsonl_name: str) -> str:
    """The MLTable file (§2.5) of a folder holding one JSONL file: what converters and sample data write."""
    return MLTABLE_TEMPLATE.format(name=jsonl_name)


def write_table(folder, jsonl_name: str, lines) -> None:
    """Write ``folder/jsonl_name`` (one JSON object per line) and ``folder/MLTable`` naming it."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / jsonl_name, "w", encoding="utf-8", newline="\n") as f:
        for obj in lines:
            f.write(json.dumps(obj) + "\n")
    (folder / "MLTable").write_text(mltable_text(jsonl_name), encoding="utf-8")


def table_files(path: str, storage_options=None) -> tuple[list[str], dict[str, Any]]:
    """JSONL files of a data input and its read options (MLTable folder, MLTable file or a JSONL file)."""
    storage_options = storage_options or {}
    mltable = None
    if is_dir(path, storage_options):
        mltable = join(path, "MLTable")
    elif path.rstrip("/").endswith("MLTable"):
        mltable = path
    if mltable is None:
        return [path], {"encoding": "utf8", "invalid_lines": "error"}
    try:
        with open_url(mltable, storage_options) as f:
            doc = yaml.safe_load(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no MLTable file in this folder (expected {mltable})") from None
    except yaml.YAMLError as e:
        raise DataError(f"{mltable}: not valid YAML ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("paths"), list) or not doc["paths"]:
        raise DataError(f"{mltable}: expected a 'paths' list with at least one '- file: <jsonl>' entry")
    base = dirname(mltable)
    files = []
    for i, entry in enumerate(doc["paths"]):
        if not isinstance(entry, dict) or "file" not in entry:
            raise DataError(f"{mltable}: paths[{i}]: expected '- file: <path to a JSONL file>', but got {entry!r}")
        files.append(join(base, str(entry["file"])))
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
        base = dirname(file)
        encoding = opts["encoding"].replace("utf8", "utf-8")
        try:
            with open_url(file, storage_options) as f:  # line by line: the text is never held whole
                n = 0
                for n, raw in enumerate(f, start=1):
                    line = raw.decode(encoding)
                    if not line.strip():
                        continue
                    try:
                        records.append(_record(line, f"{file}:{n}", base, parse, target_column, datastores))
                    except DataError:
                        if opts["invalid_lines"] == "drop":
                            dropped += 1
                            continue
                        raise
        except FileNotFoundError:
            raise DataError(f"{file}: JSONL file not found (named by {path})") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{file}:{n}: not valid {opts['encoding']} text ({e.reason})") from None
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


