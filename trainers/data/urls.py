"""Data URLs: local paths, fsspec URLs and the managed service's datastore URIs (SPEC §2.4).

``image_url`` and data paths may be

* relative to the JSONL file (``../images/a.png``), an absolute path, or ``file://...``;
* any fsspec URL (``az://``, ``abfs://``, ``s3://``, ``https://``, ``gs://``, ``memory://`` ...);
* ``azureml://subscriptions/.../datastores/<name>/paths/<p>`` or ``AmlDatastore://<p>``, resolved with a
  datastore map (``visionsweep.datastores`` in the job, or the YAML file named by
  ``$VISIONSWEEP_DATASTORES``, or the ``--datastores`` flag): ``<name>`` -> a storage URL.
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
DEFAULT_DATASTORES = ("default", "workspaceblobstore")


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


def load_datastores(job_map: Mapping[str, str] | None = None, file: str | None = None) -> dict[str, str]:
    """The datastore map: ``file`` (or ``$VISIONSWEEP_DATASTORES``), a YAML file of name: url, then the job's own map."""
    out: dict[str, str] = {}
    path = file or os.environ.get("VISIONSWEEP_DATASTORES")
    if path:
        what = "--datastores" if file else "$VISIONSWEEP_DATASTORES"
        try:
            doc = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise DataError(f"{what}={path}: cannot read the datastore map ({e})") from None
        if not isinstance(doc, dict):
            raise DataError(f"{path}: expected a mapping of datastore name -> storage URL")
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
                        f"in the job, in the file named by $VISIONSWEEP_DATASTORES, or with --datastores FILE")
    if url.startswith("file://"):
        return url[len("file://"):]
    if is_url(url):
        return url
    return join(base_dir, url)
