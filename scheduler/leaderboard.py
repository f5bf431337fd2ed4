"""The leaderboard: one row per trial, best primary metric first (SPEC §8.9)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Mapping

# Metric columns shown when present, after the primary metric.
_METRICS = ("accuracy", "iou", "precision_macro", "recall_macro", "f1_score_macro", "f1_score_weighted",
            "auc_macro", "validation_loss", "train_loss")


def leaderboard_rows(trials: Mapping[str, Any], primary: str, default_model: str = "") -> list[dict[str, Any]]:
    """Rows sorted best first; a trial's score is its best evaluation (metrics of that evaluation shown)."""
    rows = []
    for rec in trials.values():
        evals = [m for m in rec.metrics if isinstance(m.get(primary), (int, float)) and not math.isnan(m[primary])]
        best = max(evals, key=lambda m: m[primary]) if evals else {}
        row: dict[str, Any] = {
            "trial_id": rec.trial_id,
            "status": rec.status,
            "model_name": rec.params.get("model_name", default_model),
            primary: best.get(primary),
            "best_epoch": best.get("epoch"),
            "epochs_run": rec.metrics[-1].get("epoch") if rec.metrics else 0,
        }
        for k in _METRICS:
            if k != primary and k in best:
                row[k] = best[k]
        row["params"] = ";".join(f"{k}={v}" for k, v in rec.params.items() if k != "model_name")
        row["error"] = rec.error or ""
        rows.append(row)
    rows.sort(key=lambda r: (r[primary] is None, -(r[primary] or 0.0)))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows


def write_leaderboard(path: Path, rows: list[dict[str, Any]]) -> None:
    cols: list[str] = ["rank"]
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k)) for k in cols})


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v)


def format_table(rows: list[dict[str, Any]], primary: str, limit: int = 20) -> str:
    """A plain-text leaderboard for the terminal."""
    head = f"{'rank':>4}  {'trial':<12} {'status':<18} {'model':<12} {primary:>9} {'epoch':>5}  params"
    lines = [head, "-" * len(head)]
    for r in rows[:limit]:
        v = r.get(primary)
        score = f"{v:.4f}" if v is not None else "-"
        lines.append(f"{r['rank']:>4}  {r['trial_id']:<12} {r['status']:<18} {r['model_name']:<12} {score:>9} "
                     f"{str(r.get('best_epoch') or '-'):>5}  {r['params'] or '-'}"
                     + (f"  [{r['error'][:60]}]" if r.get("error") else ""))
    return "\n".join(lines)
