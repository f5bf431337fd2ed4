"""Reading bytes from a local path or an fsspec URL (``az://``, ``abfs://``, ``s3://``, ``https://`` ...).

Credentials never come from the job file's outputs: adlfs and s3fs read them from the environment
(``AZURE_STORAGE_CONNECTION_STRING``, ``AZURE_STORAGE_ACCOUNT_NAME`` + key / SAS, ``DefaultAzureCredential``;
``AWS_*`` and the boto3 chain), and ``visionsweep.storage_options`` adds per-protocol keyword arguments.
"""

from __future__ import annotations

from typing import Any, Mapping

from trainers.data.urls import is_remote, protocol

StorageOptions = Mapping[str, Mapping[str, Any]]


def filesystem(url: str, storage_options: StorageOptions | None = None):
    """``(fs, path)`` for a URL."""
    import fsspec

    return fsspec.core.url_to_fs(url, **dict((storage_options or {}).get(protocol(url), {})))


def open_url(url: str, storage_options: StorageOptions | None = None, mode: str = "rb"):
    if url.startswith("file://"):
        url = url[len("file://"):]
    if not is_remote(url):
        return open(url, mode)
    fs, path = filesystem(url, storage_options)
    return fs.open(path, mode)


def is_dir(url: str, storage_options: StorageOptions | None = None) -> bool:
    if is_remote(url):
        fs, path = filesystem(url, storage_options)
        return fs.isdir(path)
    import os

    return os.path.isdir(url.removeprefix("file://"))


def read_bytes(url: str, storage_options: StorageOptions | None = None, where: str | None = None) -> bytes:
    """The whole object; ``where`` (its JSONL line) is named in errors."""
    with open_url(url, storage_options) as f:
        return f.read()
