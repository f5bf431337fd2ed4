"""Endpoint keys, and the salted digests the router checks them against.

The keys themselves live only in the endpoint's owner-only state file (``serving.endpoints``). The router
gets its configuration through Serve's ``user_config``, which Ray's dashboard and Serve's REST API
(``GET /api/serve/applications/``) show to anyone who can reach them, so it gets only a PBKDF2-HMAC-SHA256
digest of each key under a random per-endpoint salt, and hashes the presented key the same way.

The keys are 256 random bits (``secrets.token_urlsafe(32)``), not passwords: no work factor is needed
against guessing, and the router pays the hash on every request, so the iteration count is small
(1 000 rounds: 0.35 ms on one core here; 100 000 would add 35 ms to every request).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

KEY_HASH_ITERATIONS = 1000


def new_key() -> str:
    return secrets.token_urlsafe(32)


def new_salt() -> str:
    return secrets.token_hex(16)


def digest(key: str, salt: str, iterations: int = KEY_HASH_ITERATIONS) -> str:
    return hashlib.pbkdf2_hmac("sha256", key.encode(), bytes.fromhex(salt), iterations).hex()


def key_check(keys: list[str], salt: str, iterations: int = KEY_HASH_ITERATIONS) -> dict[str, Any]:
    """What the router needs to check keys, and nothing that reveals them."""
    return {"salt": salt, "iterations": iterations, "digests": [digest(k, salt, iterations) for k in keys if k]}


def matches(token: str, check: dict[str, Any] | None) -> bool:
    """Whether ``token`` is one of the keys behind ``check`` (every digest compared, in constant time)."""
    if not token or not check or not check.get("digests"):
        return False
    presented = digest(token, check["salt"], check["iterations"])
    found = False
    for d in check["digests"]:
        found |= hmac.compare_digest(presented, d)
    return found
