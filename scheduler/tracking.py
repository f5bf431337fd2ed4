"""MLflow tracking: the sweep is a parent run, each trial a child run (SPEC §8.8, §9.1, §9.2).

Children get every hyperparameter of the trial as params, sampled, fixed and default alike (:func:`trial_params`:
nothing of the job's storage settings, and any credential inside a value as ``***``; the tag
``visionsweep.sampled`` names the sampled ones), the trial's ``log.txt`` as an artifact when it ends, and every
evaluation's metrics
with ``step`` = epoch (``train_<metric>`` too when the trial has ``log_training_metrics``). When the
sweep ends the parent gets the best trial as a tag, its metric, the best model package as artifacts
and, when asked, a registered model version in the MLflow model registry.

The store defaults to ``sqlite:///RUN/mlflow.db`` (MLflow's file store is refused by current
releases) and can be any MLflow server: ``visionsweep.tracking.uri``. Run ids are kept in
``RUN/tracking.json`` so that a resumed sweep writes into the same runs: the parent and each interrupted trial's
run are set RUNNING again and go on (an evaluation a run already holds is not logged twice), new trials get runs of
their own. A cancelled sweep ends its parent and its interrupted trials' runs KILLED.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

from scheduler.handoff import HandedOff
from scheduler.spec.redact import redact

log = logging.getLogger(__name__)


class MlflowTracker(HandedOff):
    """A Ray Tune callback that writes to MLflow from a background thread.

    Tune calls callbacks on its event loop, so the store's start-up (creating the database, ~2 s) and
    its writes (~10 ms each) would otherwise delay every trial's next step. Events are queued in order
    and written by one worker thread, started when the callback is created; ``finish`` drains the queue.
    Tune pickles its callbacks with the experiment and a resumed sweep runs the unpickled ones: like the live view
    (``scheduler.live``), an unpickled tracker starts no thread and passes its events to the tracker the resuming
    run started for the same run folder (``key``), the one whose ``finish`` ends the sweep's runs
    (``scheduler.handoff``).
    """

    # no client, queue, thread or run ids in the pickle: a resume reads the ids from tracking.json, never from a
    # snapshot taken while they were being created
    transient = ("_client", "_queue", "_worker", "_errors", "_ids", "_reopened")

    def __init__(self, run_dir: Path, uri: str | None, experiment: str, parent_name: str, primary: str,
                 tags: dict[str, str] | None = None, resolve=None, key: str | None = None):
        self.run_dir = Path(run_dir)
        self.key = key or str(self.run_dir)  # the run folder as the user named it (a path or a storage URL)
        self._reopened: dict[str, int] = {}  # trial id -> the last epoch its (resumed) run holds
        self.resolve = resolve  # sampled values -> every hyperparameter of the trial (as in params.json)
        self.uri = uri or f"sqlite:///{self.run_dir / 'mlflow.db'}"
        self.experiment, self.parent_name, self.primary = experiment, parent_name, primary
        self.tags = dict(tags or {})  # the job's tags, description (mlflow.note.content) and display name
        self._client = None
        self._ids: dict[str, Any] | None = None
        self._queue: queue.Queue | None = None
        self._start()
        self.claim(self.key)

    def _start(self) -> None:
        self._queue = queue.Queue()
        self._errors: list[str] = []
        self._worker = threading.Thread(target=self._work, name="visionsweep-mlflow", daemon=True)
        self._worker.start()
        self._submit(lambda: self.ids)  # create the store and the parent run now, off the event loop

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                job()
            except Exception as e:  # tracking must never break a sweep
                self._errors.append(f"{type(e).__name__}: {e}")
                log.warning("MLflow tracking: %s", e)
            finally:
                self._queue.task_done()

    def _submit(self, fn) -> None:
        if self._queue is None:
            self._start()
        self._queue.put(fn)

    # --- plumbing -----------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            logging.getLogger("alembic").setLevel(logging.WARNING)
            from mlflow.tracking import MlflowClient

            # "Creating initial MLflow database tables" at every sweep: MLflow's INFO, not the user's news
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @property
    def ids(self) -> dict[str, Any]:
        if self._ids is None:
            f = self.run_dir / "tracking.json"
            ids = json.loads(f.read_text()) if f.is_file() else {}
            if ids.get("parent"):  # a resumed sweep: its parent run goes on
                ids.setdefault("trials", {})
                self.client.update_run(ids["parent"], status="RUNNING")
                self._ids = ids
            else:
                exp = self.client.get_experiment_by_name(self.experiment)
                # the run folder's own store keeps its artifacts (best model, trial logs) in the run folder too,
                # not in ./mlruns of whatever folder the command was started from
                where = (self.run_dir / "mlartifacts").resolve().as_uri() if self.uri.startswith("sqlite:///") and \
                    Path(self.uri.removeprefix("sqlite:///")).parent == self.run_dir else None
                exp_id = exp.experiment_id if exp else self.client.create_experiment(self.experiment, where)
                parent = self.client.create_run(exp_id, run_name=self.parent_name,
                                                tags={**self.tags, "visionsweep.run_dir": str(self.run_dir)})
                self._ids = {"uri": self.uri, "experiment_id": exp_id, "parent": parent.info.run_id, "trials": {}}
                self._save()
        return self._ids

    def _save(self) -> None:
        (self.run_dir / "tracking.json").write_text(json.dumps(self._ids, indent=2) + "\n")

    def _child(self, trial) -> str:
        ids = self.ids
        rid = ids["trials"].get(trial.trial_id)
        if rid is not None and trial.trial_id not in self._reopened:
            self._reopened[trial.trial_id] = self._reopen(rid)
        if rid is None:
            run = self.client.create_run(ids["experiment_id"], run_name=trial.trial_id,
                                         tags={"mlflow.parentRunId": ids["parent"],
                                               "visionsweep.trial_id": trial.trial_id,
                                               "visionsweep.sampled": ",".join(sorted(trial.config))})
            rid = ids["trials"][trial.trial_id] = run.info.run_id
            self._reopened[trial.trial_id] = 0
            from mlflow.entities import Param

            params = list(trial_params(self.resolve(trial.config) if self.resolve else dict(trial.config)).items())
            for i in range(0, len(params), _PARAMS_PER_BATCH):
                self.client.log_batch(rid, params=[Param(k, v) for k, v in params[i:i + _PARAMS_PER_BATCH]])
            self._save()
        return rid

    def _reopen(self, run_id: str) -> int:
        """A trial run an earlier start of the sweep created: RUNNING again if it had ended (a cancelled or crashed
        sweep's interrupted trial, which the resume continues); returns the last epoch it holds."""
        run = self.client.get_run(run_id)
        if run.info.status not in ("RUNNING", "FINISHED"):
            self.client.update_run(run_id, status="RUNNING")
        history = self.client.get_metric_history(run_id, self.primary)
        return max((m.step for m in history), default=0)

    def _log_file(self, trial_id: str, run_id: str) -> None:
        """The trial's ``log.txt`` as an artifact of its child run (what it printed, warnings and errors)."""
        log_txt = self.run_dir / "trials" / trial_id / "log.txt"
        if log_txt.is_file():
            self.client.log_artifact(run_id, str(log_txt))

    # --- Tune events --------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        t = _TrialRef(trial)
        self._submit(lambda: self._child(t))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.primary not in result:
            return
        t = _TrialRef(trial)
        if isinstance(result.get("initial_weights"), dict):  # a trial's first evaluation says where it started
            params = weights_params(result["initial_weights"])
            self._submit(lambda: self._log_params(self._child(t), params))
        step = int(result.get("epoch") or result.get("training_iteration") or 0)
        now = int(time.time() * 1000)
        values = {k: float(v) for k, v in result.items()
                  if is_metric(k, self.primary) and isinstance(v, (int, float)) and not isinstance(v, bool)}

        def write():
            from mlflow.entities import Metric

            rid = self._child(t)
            if step and step <= self._reopened.get(t.trial_id, 0):
                return  # an epoch the run holds already, trained again after its checkpoint: logged once
            metrics = [Metric(k, v, now, step) for k, v in values.items()]
            self.client.log_batch(rid, metrics=metrics)  # one store transaction per evaluation
        self._submit(write)

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        logged = self.client.get_run(run_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in logged]  # a restarted trial reports them again
        if new:
            self.client.log_batch(run_id, params=new)

    def _end(self, trial, status: str) -> None:
        t = _TrialRef(trial)

        def end():
            rid = self._child(t)
            self._log_file(t.trial_id, rid)
            self.client.set_terminated(rid, status)
        self._submit(end)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "FAILED")

    def drain(self) -> list[str]:
        """Wait until every queued write is done; returns the errors met on the way."""
        if self._queue is not None:
            self._queue.join()
        return list(self._errors)

    # --- end of sweep -------------------------------------------------------------------------
    def finish(self, best_trial: str | None, best_metric: float | None, best_dir: Path | None,
               register_as: str | None = None, status: str = "FINISHED",
               unfinished: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
        """End the sweep's runs: the parent with ``status`` (KILLED for a cancelled sweep) and the runs of the
        ``unfinished`` trials (interrupted by the cancellation) KILLED; a resume sets them RUNNING again."""
        errors = self.drain()
        self.release()
        ids, c = self.ids, self.client
        parent = ids["parent"]
        out: dict[str, Any] = {"uri": self.uri, "parent_run_id": parent}
        if best_trial:
            c.set_tag(parent, "best_trial", best_trial)
            c.set_tag(parent, "best_trial_run_id", ids["trials"].get(best_trial, ""))
            # the service's name for it, which its notebooks read to find the best child run
            c.set_tag(parent, "automl_best_child_run_id", ids["trials"].get(best_trial, ""))
            c.log_metric(parent, f"best_{self.primary}", float(best_metric))
        if best_dir and best_dir.is_dir():
            c.log_artifacts(parent, str(best_dir), artifact_path="best_model")
            if best_trial in ids["trials"]:
                c.set_tag(ids["trials"][best_trial], "best", "true")
            if register_as:
                from mlflow.exceptions import MlflowException

                try:
                    c.create_registered_model(register_as)
                except MlflowException:
                    pass  # already registered: add a version
                mv = c.create_model_version(register_as, f"runs:/{parent}/best_model", run_id=parent)
                out["registered_model"] = {"name": register_as, "version": mv.version}
        for trial_id in unfinished:
            if trial_id in ids["trials"]:
                c.set_terminated(ids["trials"][trial_id], "KILLED")
        c.set_terminated(parent, status)
        out["status"] = status
        if errors:
            out["errors"] = errors[:5]
        return out


class _TrialRef:
    """What the writer thread needs of a Tune trial, copied now (the trial object itself keeps changing)."""

    def __init__(self, trial):
        self.trial_id, self.config = trial.trial_id, dict(trial.config)


_PARAMS_PER_BATCH = 100  # MLflow's limit of params in one log_batch


def trial_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A trial's MLflow params: its hyperparameters as strings (a nested setting as ``advanced_settings.<name>``),
    credentials in them as ``***`` (a value could be a URL with a SAS signature, e.g. a model folder on storage)."""
    out: dict[str, str] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(trial_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = redact(str(v))[:6000]
    return out


def job_tags(spec) -> dict[str, str]:
    """The job's ``tags`` (§14, as MLflow tags), ``description`` (MLflow's run note) and ``display_name``, with
    any credential inside a value as ``***``."""
    out = {str(k): redact(str(v))[:5000] for k, v in (spec.tags or {}).items()}
    if spec.description:
        out["mlflow.note.content"] = redact(spec.description)
    if spec.display_name:
        out["display_name"] = redact(spec.display_name)
    return out


def weights_params(provenance: dict[str, Any]) -> dict[str, str]:
    """A trial's initial weights as MLflow params (``initial_weights.source`` / ``.file`` / ``.sha256`` ...)."""

    keys = ("source", "weights", "file", "sha256", "origin", "location", "licence")
    return {f"initial_weights.{k}": redact(str(provenance[k]))[:500] for k in keys if provenance.get(k) is not None}


def is_metric(key: str, primary: str) -> bool:
    """Whether a result key is logged as an MLflow metric: the task's metrics and losses, the training
    metrics of ``log_training_metrics`` (``train_<metric>``), not Ray's bookkeeping."""
    return key in _METRIC_KEYS or key == primary or key.startswith("train_")


_METRIC_KEYS = {"accuracy", "iou", "precision_macro", "precision_weighted", "recall_macro", "recall_weighted",
                "f1_score_macro", "f1_score_weighted", "auc_macro", "validation_loss", "train_loss", "learning_rate",
                "train_images_per_sec", "mean_average_precision"}
