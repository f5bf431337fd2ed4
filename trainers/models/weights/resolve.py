"""Pretrained weights for a job: found on the driver before any trial, fetched by each trial on its node.

Every model starts from the published weights its name stands for unless the job says
``visionsweep.pretrained: false``. The driver finds every model's weights before any trial (:func:`check`),
so a job that cannot have them stops at once with one error naming each model, the file it needs, every place
looked and the ``visionsweep weights pull`` command; each trial then fetches them on its own node
(:func:`initial_weights`), once per node.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Iterable, Mapping

from trainers import hyperparameters as hp
from trainers.errors import VisionsweepError
from trainers.models.weights.initial import InitialWeights
from trainers.models.weights.manifest import WeightsEntry, entries_for, entry
from trainers.models.weights.sources import Located, WeightsConfig, WeightsError, fetch, locate, missing_message

log = logging.getLogger("trainers.models.weights")


def needs_folder(model_name: str) -> bool:
    """Hugging Face models need their folder (the config) even when they start from random weights."""
    return hp.model_backend(model_name) == "huggingface"


def check(task: str, models: Iterable[tuple[str, Iterable[str] | None]], cfg: WeightsConfig,
          probe: bool = True) -> list[tuple[WeightsEntry, Located]]:
    """Before any trial: where each model's weights are, or one ``WeightsError`` naming every model that has
    none, the file it needs and every place looked. ``models``: (model_name, yolov5 sizes)."""
    found: list[tuple[WeightsEntry, Located]] = []
    missing: list[tuple[WeightsEntry, list[str]]] = []
    for name, sizes in models:
        if not cfg.pretrained and not needs_folder(name):
            continue
        try:
            wanted = entries_for(name, task, list(sizes or []))
        except VisionsweepError as err:
            raise WeightsError(f"model_name {name}: {err}", models=(name,)) from None
        for e in wanted:
            where, looked = locate(e, cfg, probe)
            if where is None:
                missing.append((e, looked))
            else:
                found.append((where.entry or e, where))  # an alternative's file, where that was found
    if missing:
        raise WeightsError(missing_message(missing, cfg),
                           models=tuple(dict.fromkeys(e.model_name for e, _ in missing)))
    return found


def on_this_machine(e: WeightsEntry, cfg: WeightsConfig) -> Located | None:
    """Where this machine already has ``e``'s weights (or an alternative's): the lookup ``run`` does (explicit, the
    weights store, the caches), without asking the origin or downloading. Files are found, not hashed here
    (``run`` checks them before use; ``visionsweep weights verify`` checks a store)."""
    found, _ = locate(e, replace(cfg, download=False), probe=False)
    return found


def initial_weights(h: Mapping[str, Any], task: str, cfg: WeightsConfig) -> InitialWeights | None:
    """A trial's initial weights on this node (None: random initialisation, ``visionsweep.pretrained: false``)."""
    name = h["model_name"]
    if not cfg.pretrained and not needs_folder(name):
        return None
    try:
        e = entry(name, task, h)
    except VisionsweepError as err:
        raise WeightsError(f"model_name {name}: {err}") from None
    init = fetch(e, cfg)
    if not cfg.pretrained:  # only the folder's config is used: random weights
        return replace(init, source="none")
    return init


def random_init_note(pretrained: bool) -> str:
    return ("models start from their published pretrained weights (visionsweep weights list shows them)" if pretrained
            else "visionsweep.pretrained: false: every model starts from random initialisation")
