"""Copies inside the training set (duplicates) and between the training and validation sets (leakage).

Exact copies share a content hash (or an ``image_url``: one image on several lines); near copies have perceptual
hashes within ``near_bits`` of 64 bits of each other, and difference hashes within ``DHASH_BITS``. Near pairs are
found with faiss's binary index (Hamming range search: exact, and fast enough for a million hashes), not by comparing
every pair in Python. Each finding names its lines (``file:line``) and ``image_url``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping, Sequence

import numpy as np

#: A near copy: perceptual hashes at most NEAR_BITS of 64 apart (faiss finds those pairs) whose difference hashes are
#: at most DHASH_BITS apart too. Measured on the bundled Fashion-MNIST images (500 distinct 28x28 images of 10 classes,
#: the hardest case: small, grey, alike): 14 distinct pairs have phashes within 4 bits (alike shoes, alike shirts),
#: and every one of them has dhashes 7-16 bits apart; copies resized to 2x were within 4 bits on both hashes (dhash
#: median 1), copies re-encoded as JPEG at quality 70 within 10 (phash) and 7 (dhash; median 1). Exact copies are
#: found by their content hash whatever these are.
NEAR_BITS = 4
DHASH_BITS = 4


def _bits(hashes: Sequence[int]) -> np.ndarray:
    return np.array([h.to_bytes(8, "big") for h in hashes], dtype="S8").view(np.uint8).reshape(-1, 8)


def near_pairs(a: Sequence[int], b: Sequence[int] | None, near_bits: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) for hashes ``a[i]`` and ``b[j]`` (``b`` None: pairs inside ``a``, i < j) at most
    ``near_bits`` apart."""
    import faiss

    if not len(a) or (b is not None and not len(b)):
        return []
    base = _bits(a if b is None else b)
    index = faiss.IndexBinaryFlat(64)
    index.add(base)
    lims, dist, ids = index.range_search(_bits(a), near_bits + 1)  # faiss keeps distances < radius
    out = []
    for i in range(len(a)):
        for k in range(lims[i], lims[i + 1]):
            j = int(ids[k])
            if b is None and j <= i:
                continue
            out.append((i, j, int(dist[k])))
    return out


def _place(r: Any) -> dict[str, str]:
    return {"image_url": r.image_url, "line": r.source}


def duplicates(train: Sequence[Any], fps: Mapping[str, Any], near_bits: int | None) -> list[dict[str, Any]]:
    """Groups of training lines that hold the same image (``kind: exact``) or near copies of each other
    (``kind: near``, with the largest Hamming ``distance`` in the group), largest groups first."""
    by_hash = _by_hash(train, fps)
    groups = [{"kind": "exact", "image_urls": [r.image_url for r in rs], "lines": [r.source for r in rs]}
              for rs in by_hash.values() if len(rs) > 1]
    if near_bits is not None:
        keys, reps = _hashed(by_hash, fps)
        pairs = [(i, j, d) for i, j, d in near_pairs([f.phash for f in reps], None, near_bits)
                 if _close(reps[i], reps[j])]
        parent = list(range(len(keys)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i, j, _ in pairs:
            ri, rj = root(i), root(j)
            if ri != rj:
                parent[rj] = ri
        worst: dict[int, int] = defaultdict(int)
        for i, _, d in pairs:
            worst[root(i)] = max(worst[root(i)], d)
        members: dict[int, list[int]] = defaultdict(list)
        for i in range(len(keys)):
            members[root(i)].append(i)
        for r, ms in members.items():
            if len(ms) > 1:
                rs = [x for m in ms for x in by_hash[keys[m]]]
                groups.append({"kind": "near", "distance": worst.get(r, 0), "image_urls": [x.image_url for x in rs],
                               "lines": [x.source for x in rs]})
    return sorted(groups, key=lambda g: (-len(g["lines"]), g["kind"] != "exact", g["lines"][0]))


def leakage(train: Sequence[Any], valid: Sequence[Any], fps: Mapping[str, Any],
            near_bits: int | None) -> list[dict[str, Any]]:
    """(training line, validation line) pairs that hold the same image (``kind: exact``) or near copies
    (``kind: near``, with their Hamming ``distance``): a validation score measured on images the model trained on."""
    by_hash = _by_hash(train, fps)
    out = []
    exact_pairs = set()
    for v in valid:
        fp = fps.get(v.image_url)
        for t in by_hash.get(fp.sha256, []) if fp is not None and fp.sha256 else []:
            out.append(_pair(t, v, "exact", 0))
            exact_pairs.add((t.source, v.source))
    if near_bits is not None:
        keys, reps = _hashed(by_hash, fps)
        vs = [v for v in valid if fps.get(v.image_url) is not None and fps[v.image_url].phash is not None]
        for i, j, d in near_pairs([fps[v.image_url].phash for v in vs], [f.phash for f in reps], near_bits):
            if not _close(fps[vs[i].image_url], reps[j]):
                continue
            for t in by_hash[keys[j]]:
                if (t.source, vs[i].source) not in exact_pairs:
                    out.append(_pair(t, vs[i], "near", d))
    return sorted(out, key=lambda p: (p["distance"], p["training_line"]))


def _by_hash(train: Sequence[Any], fps: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The training lines by their image's content hash (unreadable images left out)."""
    by_hash: dict[str, list[Any]] = defaultdict(list)
    for r in train:
        fp = fps.get(r.image_url)
        if fp is not None and fp.sha256:
            by_hash[fp.sha256].append(r)
    return by_hash


def _hashed(by_hash: Mapping[str, list[Any]], fps: Mapping[str, Any]) -> tuple[list[str], list[Any]]:
    """(content hashes with a perceptual hash, the fingerprint of each): one entry per distinct image."""
    keys = [h for h, rs in by_hash.items() if fps[rs[0].image_url].phash is not None]
    return keys, [fps[by_hash[h][0].image_url] for h in keys]


def _close(a: Any, b: Any) -> bool:
    """The difference hashes agree too (phashes alone pair alike but different images: two similar shoes)."""
    return a.dhash is None or b.dhash is None or bin(a.dhash ^ b.dhash).count("1") <= DHASH_BITS


def _pair(t: Any, v: Any, kind: str, distance: int) -> dict[str, Any]:
    return {"kind": kind, "distance": distance, "training_image_url": t.image_url, "training_line": t.source,
            "validation_image_url": v.image_url, "validation_line": v.source}
