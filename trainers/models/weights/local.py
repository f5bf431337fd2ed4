"""Where this machine already has each model's weights: ``run``'s own lookup (the weights store, this node's
weights cache, the torch hub cache, the Hugging Face cache), never the origin. ``visionsweep weights list`` shows it
beside the manifest."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

from trainers.errors import VisionsweepError
from trainers.models.weights.manifest import NoPublishedWeights
from trainers.models.weights.sources import WeightsConfig


def found_here(rows: Sequence[Any], store: str | None, warn: Callable[[str], None]) -> tuple[list[Any], list[str]]:
    """Per manifest row (by position), what this machine has of it (None: nothing), and the places looked in. A
    store that cannot be read is said once through ``warn`` and left out, so the caches are still shown."""
    from trainers.models.weights.resolve import on_this_machine
    from trainers.models.weights.sources import local_places

    cfg = WeightsConfig.create(store=store, download=False)
    out = []
    for r in rows:
        found = None
        if not isinstance(r, NoPublishedWeights):
            try:
                found = on_this_machine(r, cfg)
            except VisionsweepError as e:
                if not cfg.store:
                    raise
                warn(f"weights list: the weights store {cfg.store} could not be read, left out: {e}")
                cfg = replace(cfg, store=None)
                found = on_this_machine(r, cfg)
        out.append(found)
    return out, local_places(cfg)


def describe(found) -> dict | None:
    """What ``weights list --json`` says of a file found here (its place with no credentials in it)."""
    if found is None:
        return None
    from trainers.models.weights.initial import public

    return {"where": public(found.where), "found_in": found.detail or found.source, "source": found.source,
            "file": found.entry.file if found.entry else None}
