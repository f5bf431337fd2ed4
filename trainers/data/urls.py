"""Data URLs: local paths, fsspec URLs and the managed service's datastore URIs (SPEC §2.4).

``image_url`` and data paths may be

* relative to the JSONL file (``../images/a.png``), an absolute path, or ``file://...``;
* any fsspec URL (``az://``, ``abfs://``, ``s3://``, ``https://``, ``gs://``, ``memory://`` ...);
* ``azureml://subscriptions/.../datastores/<name>/paths/<p>`` or ``AmlDatastore://<p>``, resolved with a
  datastore map (``visionsweep.datastores`` in the job, or the YAML file named by
  ``$VISIONSWEEP_DATASTORES``, or the ``--datastores`` flag): ``<name>`` -> a storage URL;
* ``wasbs://<container>@<account>.blob.core.windows.net/<p>`` (and ``wasb://``), the service's older Blob scheme:
  read through adlfs as ``abfs://`` with the same container, account and path.

A data input's ``path`` may also name a registered data asset, ``azureml:<name>:<version>`` or
``azureml:<name>@latest`` (the highest version), resolved with a data-asset map (``visionsweep.data_assets`` in
the job, the YAML file named by ``$VISIONSWEEP_DATA_ASSETS`` or the ``--data-assets`` flag):
``<name>:<version>`` -> a path or storage URL.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from typing import Mapping

import yaml

from trainers.errors import DataError

_AZUREML = re.compile(r"^azureml://(?:.*/)?datastores/(?P<name>[^/]+)/paths/(?P<path>.*)$", re.IGNORECASE)
_AMLDS = re.compile(r"^AmlDatastore://(?P<path>.*)$", re.IGNORECASE)
_ASSET = re.compile(r"^azureml:(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]*)"
                    r"(?::(?P<version>[A-Za-z0-9_.\-]+)|@(?P<label>[A-Za-z]+))$")
DEFAULT_DATASTORES = ("default", "workspaceblobstore")
WASB_PROTOCOLS = ("wasb", "wasbs")


def is_url(s: str) -> bool:
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", s))


def is_remote(s: str) -> bool:
    """A URL that fsspec opens (anything but a local path or ``file://``)."""
    return is_url(s) and not s.startswith("file://")


def protocol(url: str) -> str:
    return url.split("://", 1)[0].lower() if is_url(url) else "file"


def join(base: str, rel: str) -> str:
    if is_url(rel) or os.path.isabs(rel):
        return rel
    if is_url(base):
        proto, rest = base.split("://", 1)
        return f"{proto}://{posixpath.normpath(posixpath.join(rest, rel))}"
    return os.path.normpath(os.path.join(base, rel))


def dirname(p: str) -> str:
    if is_url(p):
        proto, rest = p.split("://", 1)
        return f"{proto}://{posixpath.dirname(rest)}"
    return os.path.dirname(p)


def _load_map(job_map: Mapping[str, str] | None, file: str | None, env: str, flag: str, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    path = file or os.environ.get(env)
    if path:
        where = flag if file else f"${env}"
        try:
            doc = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise DataError(f"{where}={path}: cannot read the {what} map ({e})") from None
        if not isinstance(doc, dict):
            raise DataError(f"{path}: expected a mapping of {what} -> storage URL")
        out.update({str(k): str(v) for k, v in doc.items()})
    out.update(job_map or {})
    return out


def load_datastores(job_map: Mapping[str, str] | None = None, file: str | None = None) -> dict[str, str]:
    """The datastore map: ``file`` (or ``$VISIONSWEEP_DATASTORES``), a YAML file of name: url, then the job's own
    map."""
    return _load_map(job_map, file, "VISIONSWEEP_DATASTORES", "--datastores", "datastore name")


def load_data_assets(job_map: Mapping[str, str] | None = None, file: str | None = None) -> dict[str, str]:
    """The data-asset map: ``file`` (or ``$VISIONSWEEP_DATA_ASSETS``), a YAML file of ``name:version: url``, then
    the job's own map."""
    return _load_map(job_map, file, "VISIONSWEEP_DATA_ASSETS", "--data-assets", "data asset name:version")


def _version_key(v: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-_]", v))


def resolve_data_asset(path: str, assets: Mapping[str, str], where: str) -> str:
    """``azureml:<name>:<version>`` / ``azureml:<name>@latest`` -> the path or URL the data-asset map gives;
    any other path unchanged."""
    m = _ASSET.match(path)
    if not m:
        return path
    name = m.group("name")
    versions = {k.split(":", 1)[1]: v for k, v in assets.items() if k.split(":", 1)[0] == name and ":" in k}
    if m.group("label"):
        if m.group("label") != "latest":
            raise DataError(f"{where}: {path!r}: the only label of a data asset is @latest, "
                            f"or name a version: azureml:{name}:<version>")
        if versions:
            return versions[max(versions, key=_version_key)]
    elif m.group("version") in versions:
        return versions[m.group("version")]
    known = ", ".join(sorted(assets)) or "none"
    raise DataError(f"{where}: data asset {path!r} is not in the data-asset map (known: {known}); add "
                    f"'{name}:<version>: <path or storage URL>' under visionsweep.data_assets in the job, in the file "
                    "named by $VISIONSWEEP_DATA_ASSETS, or with --data-assets FILE")


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
                        f"in the job, in the file named by $VISIONSWEEP_DATASTORES, or with --datastores FILE")
    if url.startswith("file://"):
        return url[len("file://"):]
    if protocol(url) in WASB_PROTOCOLS:
        return "abfs://" + url.split("://", 1)[1]
    if is_url(url):
        return url
    return join(base_dir, url)
