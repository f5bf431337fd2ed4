"""How the training labels are spread over the classes, and what to do where they are not.

Images per class for classification (an image counts for each of its labels in multi-label), objects per class for
detection and segmentation. The spec recommends at least 10-15 examples per label (§2.8); a class under
``MIN_PER_CLASS`` is named. The imbalance ratio is the largest class over the smallest; over ``IMBALANCED`` the advice
names the job keys that help.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from trainers import hyperparameters as hp
from trainers.labels import Box, class_names_of

MIN_PER_CLASS = 10  # §2.8: "start with at least 10-15 samples per label"
IMBALANCED = 10.0  # largest class / smallest class above which the advice speaks


def _items(label: Any) -> tuple:
    return label if isinstance(label, tuple) else ()


def balance(task: str, train: Sequence[Any], classes: Sequence[str]) -> dict[str, Any]:
    counts = Counter(name for r in train for name in class_names_of(task, r.label))
    per_class = {c: counts.get(c, 0) for c in classes}
    unit = "objects" if any(isinstance(x, Box) for r in train for x in _items(r.label)) else "images"
    under = sorted((c for c, n in per_class.items() if n < MIN_PER_CLASS), key=lambda c: (per_class[c], c))
    present = [n for n in per_class.values() if n > 0]
    ratio = round(max(present) / min(present), 2) if present else None
    advice = []
    if under:
        advice.append(f"{len(under)} class(es) have fewer than {MIN_PER_CLASS} training {unit} ("
                      + ", ".join(f"{c}: {per_class[c]}" for c in under[:10]) + (" ..." if len(under) > 10 else "")
                      + "): add examples of them (the spec recommends 10-15 per label), or merge or drop them")
    if ratio is not None and ratio > IMBALANCED:
        big = max(per_class, key=per_class.get)
        small = min((c for c in per_class if per_class[c] > 0), key=per_class.get)
        fix = ("set training_parameters.weighted_loss: 1 (or 2) to weight the loss by class frequency"
               if task in hp.PARAMS["weighted_loss"].tasks else "collect more examples of the rare classes")
        advice.append(f"the largest class ({big}, {per_class[big]} {unit}) has {ratio:g}x the smallest ({small}, "
                      f"{per_class[small]}): {fix}; the report's per-class metrics show what it costs")
    return {"unit": unit, "per_class": per_class, "minimum": MIN_PER_CLASS, "classes_under_minimum": under,
            "imbalance_ratio": ratio, "advice": advice}
