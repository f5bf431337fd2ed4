"""Request bodies of an endpoint (SPEC §10.5, §15) -> images to predict, or a 4xx ``BadRequest``.

Accepted:

* ``application/json``: ``{"input_data": {"columns": ["image"], "data": [<item>, ...]}}`` where an item
  is the base64 of an image file (MIME line breaks tolerated), or a JSON *string* of
  ``{"image_base64": ..., "model_explainability": true, "xai_parameters": {...}}`` for explanations;
* ``image/*`` or ``application/octet-stream``: the raw bytes of one image (a convenience).

Every problem is a :class:`BadRequest` with an HTTP status (400 malformed, 413 too large, 415 wrong
content type) and a message saying what was expected; the server never answers 5xx for a bad request.

Limits: a body of at most ``MAX_BODY_BYTES``, enforced while it is read (:func:`read_body`); at most
``MAX_IMAGES`` images per request; an image of at most ``MAX_IMAGE_PIXELS`` pixels, checked from its header
before it is decoded (``serving.predictor.decode_image``).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, AsyncIterable, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainers.errors import VisionsweepError

MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_IMAGES = 64
# 50 megapixels: more than the largest common camera sensors (a 50 MP photo is 8660 x 5770), while one
# decoded image stays within 150 MB as RGB. A PNG of a few kB can declare 20000 x 20000 pixels (1.2 GB).
MAX_IMAGE_PIXELS = 50_000_000


class BadRequest(VisionsweepError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class XaiParameters(BaseModel):
    """``xai_parameters`` (§10.3, §10.5) with the spec's defaults."""

    model_config = ConfigDict(extra="forbid")
    xai_algorithm: Literal["xrai", "integrated_gradients", "guided_gradcam", "guided_backprop"] = "xrai"
    n_steps: int = Field(50, ge=2)
    xrai_fast: bool = True
    approximation_method: Literal["riemann_middle", "gausslegendre"] = "riemann_middle"
    visualizations: bool = True
    attributions: bool = False
    confidence_score_threshold_multilabel: float = Field(0.5, ge=0, le=1)


@dataclass
class Item:
    image: bytes
    xai: Optional[XaiParameters] = None


def decode_base64(s: str, where: str) -> bytes:
    try:
        return base64.b64decode("".join(s.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where}: not valid base64") from None


def _item(value: Any, i: int) -> Item:
    where = f"input_data.data[{i}]"
    if not isinstance(value, str):
        raise BadRequest(f"{where}: expected a base64 string (or a JSON string for explanations), "
                         f"but got {type(value).__name__}")
    text = value.lstrip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise BadRequest(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("image_base64"), str):
            raise BadRequest(f"{where}: expected an object with an 'image_base64' string")
        xai = None
        if obj.get("model_explainability"):
            try:
                xai = XaiParameters.model_validate(obj.get("xai_parameters") or {})
            except ValidationError as e:
                err = e.errors()[0]
                raise BadRequest(f"{where}.xai_parameters.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        return Item(decode_base64(obj["image_base64"], f"{where}.image_base64"), xai)
    return Item(decode_base64(value, where))


async def read_body(chunks: AsyncIterable[bytes], content_length: str | None, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body from its ``chunks`` as they arrive, refused (413) as soon as it passes ``limit``:
    a declared ``Content-Length`` above it before any byte is read, a chunked (or longer) body at the first
    chunk past it. Buffering first and measuring after would let one request hold any amount of memory.

    Serve's HTTP proxy reads ahead of the router into a queue of its own (Ray 2.60 has no body limit there)
    and stops when the router has answered: a client can make the cluster hold about the limit plus what it
    sends while the 413 travels back, not its whole body."""
    if content_length and content_length.strip().isdigit() and int(content_length) > limit:
        raise BadRequest(f"request body is {int(content_length)} bytes (Content-Length); at most {limit} bytes "
                         f"({limit / 2 ** 20:g} MiB) are accepted", 413)
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise BadRequest(f"request body is larger than {limit} bytes ({limit / 2 ** 20:g} MiB), the most "
                             "accepted", 413)
    return bytes(body)


def parse_request(body: bytes, content_type: str | None) -> list[Item]:
    """A body read by :func:`read_body` (so within ``MAX_BODY_BYTES``) -> its items."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        if not body:
            raise BadRequest("empty image body")
        return [Item(body)]
    if ctype != "application/json":
        raise BadRequest(f"unsupported content type {content_type!r}; send application/json "
                         "({\"input_data\": {\"columns\": [\"image\"], \"data\": [<base64>]}}) or image bytes", 415)
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"malformed JSON ({getattr(e, 'msg', e)})") from None
    data = doc.get("input_data", {}).get("data") if isinstance(doc, dict) and isinstance(doc.get("input_data"), dict) \
        else None
    if not isinstance(data, list):
        raise BadRequest("expected {\"input_data\": {\"columns\": [\"image\"], \"data\": [...]}}")
    if not data:
        raise BadRequest("input_data.data is empty")
    if len(data) > MAX_IMAGES:
        raise BadRequest(f"input_data.data has {len(data)} images; at most {MAX_IMAGES} per request", 413)
    return [_item(v, i) for i, v in enumerate(data)]
