"""What a finished job gives back in Python: the best trial and its hyperparameters, the leaderboard as rows, the
model package and the run folder (read from the run folder's files, so a job run elsewhere reads the same)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scheduler.leaderboard import leaderboard_rows
from scheduler.runfolder import read_params, read_trials, trial_dir
from trainers import hyperparameters as hp


@dataclass
class Result:
    """A finished (or stopped) job.

    Attributes:
        run_folder: the run folder as named (a local path or a storage URL).
        local_folder: the run folder on this machine (for a storage URL: its staged copy).
        primary_metric: the task's metric (``accuracy``, ``iou``, ``mean_average_precision``).
        best_trial / best_metric: the trial with the best primary metric at any evaluation, and that value.
        best_params: every hyperparameter of the best trial (sampled, fixed and default values).
        best_sampled: the values the sweep sampled for it.
        package: the best model's package (``RUN/best``): serve it, export it, ``predict`` with it.
        leaderboard: one dict per trial, best first (the rows of ``leaderboard.csv``, with their types).
        summary: ``summary.json`` (mode, trial counts, timings, where the initial weights came from ...).
    """

    run_folder: str
    local_folder: Path
    primary_metric: str
    best_trial: str | None
    best_metric: float | None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_sampled: dict[str, Any] = field(default_factory=dict)
    package: str | None = None
    leaderboard: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_folder(cls, local: str | Path, where: str | None = None,
                    rows: list[dict[str, Any]] | None = None) -> Result:
        """The result in a run folder on this machine; ``rows``: the leaderboard when the caller has it already
        (the run that just wrote the folder), else it is read from the trials as ``leaderboard.csv`` was."""
        local = Path(local)
        summary = json.loads((local / "summary.json").read_text())
        if rows is None:
            resolved = yaml.safe_load((local / "job.resolved.yaml").read_text())
            default_model = resolved["training_parameters"].get("model_name") or hp.DEFAULT_MODEL[resolved["task"]]
            rows = leaderboard_rows(read_trials(local), summary["primary_metric"], default_model)
        best = summary.get("best_trial")
        sampled, everything = read_params(trial_dir(local, best)) if best else ({}, {})
        return cls(run_folder=where or str(local), local_folder=local, primary_metric=summary["primary_metric"],
                   best_trial=best, best_metric=summary.get("best_metric"), best_params=everything,
                   best_sampled=sampled, package=summary.get("best_package"), leaderboard=rows, summary=summary)

    @classmethod
    def load(cls, where: str | Path) -> Result:
        """The result in a run folder: a local path or a storage URL (whose files, less the models, are staged)."""
        from scheduler.runstore import RunStore

        store = RunStore.at(where)
        if store.remote:
            store.pull(skip=("best", "outputs"))
        return cls.from_folder(store.local, store.where)

    def predict(self, images: list[str], **options: Any) -> list[dict[str, Any]]:
        """The best model's answers for image files, as ``visionsweep predict`` prints them (each response naming its
        image first; ``format="coco"`` for COCO results). ``options``: those of
        :func:`serving.offline.predict_files` (``device``, ``settings``, ``format``, ``coco_gt``, ``draw``)."""
        from serving.offline import predict_files

        return predict_files(self._package(), [str(i) for i in images], **options).results

    def export(self, output: str | Path | None = None, int8: bool = False, **options: Any) -> str:
        """The best model as ONNX, as ``visionsweep export`` writes it (default ``PACKAGE/model.onnx``; with ``int8``,
        ``PACKAGE/model.int8.onnx``); returns where it went. ``options``: those of
        :func:`trainers.package.exporting.export_package`."""
        from trainers.package.exporting import export_package

        return export_package(self._package(), None if output is None else str(output), int8=int8, **options).where

    def _package(self) -> str:
        if not self.package:
            from trainers.errors import VisionsweepError

            raise VisionsweepError(f"{self.run_folder}: no model package (no trial finished with a model)")
        return self.package

    def __repr__(self) -> str:
        metric = f"{self.best_metric:.4f}" if isinstance(self.best_metric, (int, float)) else "none"
        return (f"Result(best_trial={self.best_trial!r}, {self.primary_metric}={metric}, "
                f"trials={len(self.leaderboard)},"
                f" package={self.package!r}, run_folder={self.run_folder!r})")
