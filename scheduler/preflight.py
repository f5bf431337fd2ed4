"""What is checked before any trial, and before the data is read: every model the job can train runs here (its
optional extra installed, an MMDetection config known) and has its initial weights somewhere
(``trainers.models.weights``).
A job that fails these stops at once with what to install, change or fetch, at the YAML line that names the model.
``visionsweep validate`` runs the same checks (:func:`check_before_trials`), so it refuses what ``run`` would.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

from scheduler.joblog import apply_job_logging
from scheduler.spec import Job
from scheduler.spec.load import locate
from scheduler.spec.redact import redact
from trainers import hyperparameters as hp
from trainers.data.urls import is_url, join
from trainers.errors import VisionsweepError
from trainers.models.weights.manifest import entries_for
from trainers.models.weights.resolve import check as check_models
from trainers.models.weights.resolve import needs_folder
from trainers.models.weights.sources import STORE_ENV, WeightsConfig, WeightsError
from trainers.models.weights.sources import locate as locate_weights


def check_supported(job: Job) -> None:
    """Before any trial: every model the job can pick is buildable here (its optional extra installed,
    an MMDetection config name known), or the job stops with what to install or change."""

    apply_job_logging(job)  # log_verbosity (own loggers only) and credential redaction on run, resume and demo
    names = [job.training_parameters.get("model_name")]
    for sub in job.search_space or []:
        if "model_name" in sub:
            names += list(sub["model_name"].values)
    default = job.mode != "automode" and not any(names)
    if default:
        names = [hp.DEFAULT_MODEL[job.task]]
    for n in names:
        if not n:
            continue
        if hp.model_backend(n) == "huggingface":
            from trainers.models.huggingface import require_transformers

            require_transformers()  # the error carries the install command
        elif hp.model_backend(n) == "mmdetection":
            from trainers.models.openmmlab import config_path

            config_path(n)  # the extra is installed and the zoo has that config
        elif n == "yolov5":
            from trainers.models.openmmlab import require

            try:
                require(yolo=True)
            except VisionsweepError as e:
                why = ", the default model of image_object_detection," if default else ""
                others = ", ".join(m for m in hp.DETECTION_MODELS if m != "yolov5")
                raise VisionsweepError(f"model_name: yolov5{why} cannot run here: {e} (or set model_name to "
                                       f"one of {others})") from None


def weights_config(job: Job) -> WeightsConfig:
    """Where the job's initial weights come from (``trainers.models.weights.sources``), handed to every trial."""
    ext = job.spec.visionsweep
    store = ext.weights_store or os.environ.get(STORE_ENV) or None
    if store:  # a relative folder is the job file's, as data paths are
        store = join(str(job.base_dir), store)
    explicit = {k: v if is_url(v) else join(str(job.base_dir), v) for k, v in ext.pretrained_weights.items()}
    return WeightsConfig.create(pretrained=ext.pretrained, explicit=explicit, store=store,
                                storage_options=ext.storage_options, download=ext.download_weights,
                                cache_dir=ext.cache.dir)


def check_weights(job: Job, cfg: WeightsConfig, names: list[str] | None = None,
                  model_sizes: list[str] | None = None) -> tuple[WeightsConfig, dict[str, Any]]:
    """Before any trial: every model the job can train has its weights somewhere (else one ``WeightsError``
    naming each model, its file, every place looked and the pull command). Returns the config with the cache
    paths the driver saw (a trial on this machine uses them) and the plan written to ``weights.json``.
    ``model_sizes``: the yolov5 sizes AutoMode chose (default: the job's)."""
    names = job.model_names() if names is None else names
    sizes = model_sizes or job.model_sizes()
    try:
        found = check_models(job.task, [(n, sizes if n == "yolov5" else None) for n in names], cfg)
    except WeightsError as e:
        raise WeightsError(_at_models(job, e.models, str(e)), e.models) from None
    seen = {e.file: where.where for e, where in found if where.source == "cache"}
    plan = {"pretrained": cfg.pretrained,
            "models": {e.label: {"source": where.source, "where": _public(where.where), "detail": where.detail,
                                 "file": e.file, "weights": e.weights, "hash": e.hash_text, "licence": e.licence}
                       for e, where in found}}
    return cfg.with_seen(seen), plan


def _public(where: str) -> str:
    return redact(where)


def weights_lines(plan: dict[str, Any]) -> list[str]:
    if not plan["pretrained"]:
        return ["weights: none: every model starts from random initialisation (visionsweep.pretrained: false)"]
    return [f"weights: {name} from {m['detail'] or m['source']} ({m['where']}; {m['weights']})"
            for name, m in plan["models"].items()]


def weights_available(job: Job, cfg: WeightsConfig) -> Callable[..., str | None]:
    """For AutoMode: None when a model's weights can be had (or are not needed), else why not (``model_size``: the
    yolov5 size AutoMode tries; default: the job's)."""
    def why_not(name: str, model_size: str | None = None) -> str | None:
        if not cfg.pretrained and not needs_folder(name):
            return None
        try:
            sizes = [model_size] if model_size else job.model_sizes()
            wanted = entries_for(name, job.task, sizes if name == "yolov5" else None)
        except VisionsweepError as e:
            return str(e)
        for e in wanted:
            found, looked = locate_weights(e, cfg)
            if found is None:
                return f"{e.file} is in none of: " + "; ".join(looked)
        return None
    return why_not


def check_before_trials(job: Job) -> list[str]:
    """``visionsweep validate``: what ``run`` refuses before any trial, refused here with the same message (the
    models can run here, and have their weights: AutoMode leaves out the candidates that have none, as ``run``
    does, and refuses only when no candidate is left). Returns the lines saying where the weights come from."""
    check_supported(job)
    ref = job.training_parameters.get("checkpoint_run_id")
    if ref:  # incremental training: the earlier model's weights, not the published ones
        return [f"weights: from checkpoint_run_id {ref}"]
    cfg = weights_config(job)
    if job.mode != "automode":
        return weights_lines(check_weights(job, cfg)[1])
    from scheduler import automode

    available = functools.lru_cache(maxsize=None)(weights_available(job, cfg))  # each candidate probed once
    plans, errors = [], []
    for gpu in (True, False):  # the cluster's hardware is known when the job runs: either may be the one
        try:
            plans.append(automode.plan(job.task, job.spec.limits.max_trials, job.training_parameters, gpu,
                                       available, cfg.pretrained))
        except VisionsweepError as e:
            errors.append(e)
    if not plans:
        raise VisionsweepError(f"{locate(job, ('limits', 'max_trials'))}: {errors[0]}")
    picked = list(dict.fromkeys(m["model_name"] for p in plans for m in p["models"]))
    skipped = list(dict.fromkeys(c["model_name"] for p in plans for c in p["considered"]
                                 if not c["considered"] and c["why"].startswith("no pretrained weights")))
    lines = [f"weights: AutoMode picks from {', '.join(picked)}, whose pretrained weights can be had here"
             if cfg.pretrained else weights_lines({"pretrained": False})[0]]
    if skipped:
        lines.append(f"weights: AutoMode leaves out {', '.join(skipped)}: no pretrained weights for them here "
                     f"(visionsweep weights pull {' '.join(skipped)} --to {cfg.store or 'DIR_OR_URL'} fills a "
                     "weights store)")
    return lines


def _at_models(job: Job, models: tuple[str, ...], message: str) -> str:
    """A weights error about ``models`` with the YAML line of each model name in front."""
    where = list(dict.fromkeys(_model_line(job, m) for m in models)) or [locate(job, ("training_parameters",))]
    out = f"{where[0]}: {message}"
    if len(where) > 1:
        out += "\n  the job names them at: " + "; ".join(where)
    return out


def _model_line(job: Job, name: str) -> str:
    """``FILE:LINE: yaml.path`` where the job names ``name``: training_parameters, a search_space choice, else the
    task whose default it is (or AutoMode's limits.max_trials, for a candidate AutoMode picked)."""
    if job.training_parameters.get("model_name") == name:
        return locate(job, ("training_parameters", "model_name"))
    for i, sub in enumerate(job.search_space or []):
        values = list(getattr(sub.get("model_name"), "values", []))
        if name in values:
            return locate(job, ("search_space", i, "model_name", "values", values.index(name)))
    if job.mode == "automode":
        return f"{locate(job, ('limits', 'max_trials'))} (AutoMode's candidate {name})"
    return f"{locate(job, ('task',))} (no model_name: {name} is the task's default)"
