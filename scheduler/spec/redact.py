"""Credentials in a job, and everything derived from it, shown as ``***``.

Values under ``visionsweep.storage_options`` keys that look like credentials (key, token, password, SAS,
connection string ...; nested ones too), and secrets inside any string: a SAS ``sig=``, presigned-URL
signatures, ``AccountKey=``, the password of ``user:password@host``. :func:`redact` masks them in text; the job
file's own spans are found by :func:`secret_spans` so the stored job stays valid YAML.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import yaml

# storage_options keys whose values are credentials: account_key, sas_token, connection_string, client_secret,
# aws_secret_access_key, aws_session_token, password, credential, token, key ...
SECRET_KEY = re.compile(r"key|secret|token|passw|pwd|sas|credential|connection_string|sig", re.IGNORECASE)


# Credentials inside a string: a SAS signature (sig=), presigned S3 / GCS URLs, connection-string keys,
# password or token query parameters, and the password of user:password@host.
_INLINE_SECRET = re.compile(
    r"((?<![\w-])(?:sig|signature|x-(?:amz|goog)-(?:signature|credential|security-token)|accountkey|sharedaccesskey"
    r"|password|pwd|(?:access_|session_|sas_)?token|client_secret|api_?key)=)([^&;\s'\"#]+)"
    r"|(\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:)([^@/\s'\"]+)@",
    re.IGNORECASE)


MASK = "***"


_MIN_SECRET = 4  # shorter values are masked where they are job values, but not searched for in free text


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with credentials as ``***``: the given secret values wherever they occur, and secrets
    embedded in URLs and connection strings (only the signature, key or password: the rest of a URL
    stays readable)."""
    for secret in sorted({s for s in secrets if len(s) >= _MIN_SECRET and s != MASK}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return _INLINE_SECRET.sub(lambda m: f"{m.group(1)}{MASK}" if m.group(1) else f"{m.group(3)}{MASK}@", text)


def secret_values(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in secret_values(v)]
    if isinstance(node, (list, tuple)):
        return [s for v in node for s in secret_values(v)]
    return [node] if isinstance(node, str) and node else []


def mask_secret_keys(node: Any) -> Any:
    """A storage_options tree with every value under a credential-like key (at any depth) as ``***``."""
    if isinstance(node, dict):
        return {k: MASK if SECRET_KEY.search(str(k)) else mask_secret_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [mask_secret_keys(v) for v in node]
    return node


def redact_strings(node: Any, secrets: list[str]) -> Any:
    if isinstance(node, dict):
        return {k: redact_strings(v, secrets) for k, v in node.items()}
    if isinstance(node, list):
        return [redact_strings(v, secrets) for v in node]
    return redact(node, secrets) if isinstance(node, str) else node


def walk_items(node: Any):
    """Every (key, value) pair of a nested mapping, at any depth."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from walk_items(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk_items(v)


def secret_spans(node, path: tuple) -> list[tuple[int, int]]:
    """Character spans of the YAML value nodes that hold credentials: under ``visionsweep.storage_options``,
    the value of every credential-like key (whole, when it is a mapping)."""
    out: list[tuple[int, int]] = []
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else ""
            here = path + (key,)
            opts = here[:2] == ("visionsweep", "storage_options") and len(here) > 3
            if opts and SECRET_KEY.search(str(key)):
                out.append((v.start_mark.index, v.end_mark.index))
            else:
                out += secret_spans(v, here)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out += secret_spans(v, path + (i,))
    return out
