"""The data check (issue 29): what is wrong with data that is well formed, found before the first trial.

    duplicates   the same image on several training lines, exactly (content hash) or nearly (perceptual hash)
    leakage      training images that are (near) copies of validation images
    label_issues likely wrong labels (classification): out-of-fold probabilities of a linear model on a pretrained
                 backbone's features, ranked by confident learning (``labels``)
    balance      examples per class, classes under the recommended minimum, the imbalance ratio, what to do
    boxes        sub-pixel boxes, objects boxed twice, self-intersecting polygons, the share of tiny objects

Levels (``visionsweep.data_check`` for ``run``, default ``quick``; ``visionsweep check-data`` runs ``standard``, or
``deep`` with ``--deep``): ``quick`` reads every image's bytes once on the cluster's nodes (content hash and size:
exact copies, the box checks) and the labels; ``standard`` adds the perceptual hash (near copies); ``deep`` adds the
label check (a backbone's pass over every image). ``off``: nothing. The images are read in Ray tasks through the job's
``ImageStore`` (its node cache: the trials then find them there); the driver reads JSONL lines only. Every finding
names its JSONL ``line`` (``file:line``) and ``image_url``. The findings go to ``RUN/data_check.json``, one line to
the console, and the report's "Data" section.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from scheduler.data_check.balance import balance
from scheduler.data_check.boxes import boxes
from scheduler.data_check.duplicates import NEAR_BITS, duplicates, leakage

FILE = "data_check.json"
LEVELS = ("off", "quick", "standard", "deep")


def check_data(task: str, train: Sequence[Any], valid: Sequence[Any], classes: Sequence[str], store: Any,
               level: str = "standard", tile_grid_size: Any = None,
               echo: Callable[[str], None] | None = None, weights_cfg: Any = None) -> dict[str, Any]:
    """The findings of a job's prepared data (``train``/``valid``: ``trainers.data.tables.Record`` lists as the
    trials get them; ``store``: the job's ``ImageStore``); Ray must be initialised (the images are read in its
    tasks; ``weights_cfg``: the job's weights config, where the label check finds its backbone). Returns what
    ``RUN/data_check.json`` holds."""
    from trainers.progress import Progress

    if level not in LEVELS or level == "off":
        raise ValueError(f"level: expected one of {', '.join(LEVELS[1:])}, but got {level!r}")
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    perceptual = level in ("standard", "deep")
    near = NEAR_BITS if perceptual else None
    urls = [r.image_url for r in (*train, *valid)]
    from scheduler.data_check.content import fingerprints

    with Progress("data check: reading images", len(set(urls))) as progress:
        fps = fingerprints(urls, store, perceptual, progress=progress)
    seconds["images"] = round(time.perf_counter() - t, 2)
    unreadable = [{"image_url": r.image_url, "line": r.source, "error": fps[r.image_url].error}
                  for r in (*train, *valid) if fps[r.image_url].error]
    t = time.perf_counter()
    out: dict[str, Any] = {
        "level": level, "task": task, "training_images": len(train), "validation_images": len(valid),
        "distinct_images": len(fps), "near_bits": near,
        "duplicates": duplicates(train, fps, near),
        "leakage": leakage(train, valid, fps, near),
        "balance": balance(task, train, classes),
        "boxes": boxes((*train, *valid), fps, tile_grid_size),
        "unreadable": unreadable[:200], "unreadable_count": len(unreadable),
    }
    seconds["copies_balance_boxes"] = round(time.perf_counter() - t, 2)
    from scheduler.data_check import labels

    if level == "deep" and task in labels.SINGLE_LABEL:  # the tasks whose labels are class names
        t = time.perf_counter()
        readable = [r for r in train if not fps[r.image_url].error]
        if echo:
            echo(f"data check: features of {len(readable)} training images for the label check")
        features = labels.embed(readable, store, weights_cfg=weights_cfg)
        out["label_issues"] = labels.find_label_issues(task, readable, list(classes), features)
        seconds["labels"] = round(time.perf_counter() - t, 2)
    else:
        out["label_issues"] = []
        out["label_check"] = ("not run: the label check is for classification" if level == "deep" else
                              "not run: level deep (visionsweep check-data --deep; visionsweep.data_check: deep "
                              "for run) runs it")
    out["seconds"] = seconds
    return out


def summary_line(findings: dict[str, Any]) -> str:
    """One line for the console: what was found, and where the details are."""
    parts = []
    dup = findings["duplicates"]
    if dup:
        parts.append(f"{len(dup)} group(s) of duplicate training images ({sum(len(g['lines']) for g in dup)} lines)")
    if findings["leakage"]:
        parts.append(f"{len(findings['leakage'])} training image(s) also in validation")
    if findings.get("label_issues"):
        parts.append(f"{len(findings['label_issues'])} likely wrong label(s)")
    b = findings["balance"]
    if b["classes_under_minimum"]:
        parts.append(f"{len(b['classes_under_minimum'])} class(es) under {b['minimum']} {b['unit']}")
    if b["imbalance_ratio"] and b["imbalance_ratio"] > 10:
        parts.append(f"imbalance {b['imbalance_ratio']:g}x")
    bx = findings.get("boxes") or {}
    for key, what in (("degenerate_count", "sub-pixel box(es)"), ("duplicate_boxes_count", "object(s) boxed twice"),
                      ("invalid_polygons_count", "invalid polygon(s)")):
        if bx.get(key):
            parts.append(f"{bx[key]} {what}")
    if bx.get("tiny_share") and bx["tiny_share"] > 0.3:
        parts.append(f"{bx['tiny_share']:.0%} tiny objects")
    if findings.get("unreadable_count"):
        parts.append(f"{findings['unreadable_count']} unreadable image(s)")
    found = "; ".join(parts) if parts else "nothing found"
    return f"data check ({findings['level']}, {findings['distinct_images']} images): {found}"


def write(run_dir: str | Path, findings: dict[str, Any]) -> Path:
    path = Path(run_dir) / FILE
    path.write_text(json.dumps(findings, indent=2) + "\n")
    return path


def details(findings: dict[str, Any], shown: int = 5) -> str:
    """The findings for a person: each kind with its first ``shown`` places (``file:line``, ``image_url``) and the
    advice; ``--json`` has them all."""
    lines = []
    for g in findings["duplicates"][:shown]:
        pairs = zip(g["lines"], g["image_urls"])
        lines.append(f"duplicate ({g['kind']}): " + ", ".join(f"{ln} {u}" for ln, u in pairs))
    for p in findings["leakage"][:shown]:
        lines.append(f"leak ({p['kind']}): training {p['training_line']} {p['training_image_url']} = validation "
                     f"{p['validation_line']} {p['validation_image_url']}")
    for i in findings.get("label_issues", [])[:shown]:
        lines.append(f"label: {i['line']} {i['image_url']}: given {i['given']}, likely {i['suggested']} "
                     f"(label quality {i['score']:.3f})")
    if findings.get("label_check"):
        lines.append(f"labels: {findings['label_check']}")
    b = findings["balance"]
    counts = list(b["per_class"].items())
    lines.append(f"balance: {b['unit']} per class " + ", ".join(f"{c} {n}" for c, n in counts[:20])
                 + (" ..." if len(b["per_class"]) > 20 else "")
                 + (f"; imbalance ratio {b['imbalance_ratio']:g}" if b["imbalance_ratio"] else ""))
    advice = [*b["advice"], *(findings.get("boxes") or {}).get("advice", [])]
    for u in findings.get("unreadable", [])[:shown]:
        lines.append(f"unreadable: {u['line']} {u['image_url']}: {u['error']}")
    lines += [f"advice: {a}" for a in advice]
    more = [f"{len(findings[k]) - shown} more {k}" for k in ("duplicates", "leakage", "label_issues")
            if len(findings.get(k, [])) > shown]
    if more:
        lines.append("and " + ", ".join(more) + " (--json lists them all)")
    return "\n".join(lines)
