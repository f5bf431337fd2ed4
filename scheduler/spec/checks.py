"""Rules that span several keys of a job or need its task (SPEC §3, §6.4, §6.7, §8.1, §8.2), checked on every
value a trial could take, so a job some trial could not train with fails before the sweep, not trial by trial.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from scheduler.space import Choice
from scheduler.spec.job import Job, job_models
from scheduler.spec.schema import AdvancedSettings, JobSpec, Sweep
from trainers import hyperparameters as hp
from trainers.errors import SpecError, did_you_mean

if TYPE_CHECKING:
    from scheduler.spec.load import Locator


def _canonical_keys(d: dict[str, Any], loc: Locator, path: tuple) -> dict[str, Any]:
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for k, v in d.items():
        c = hp.canonical_name(k)
        if c in out:
            raise SpecError(f"{loc(path + (k,))}: {given[c]!r} and {k!r} are two spellings of {c!r}; keep one")
        out[c], given[c] = v, k
    return out


def check_job(spec: JobSpec, loc: Locator, source: Path | None, base_dir: Path, text: str) -> Job:
    """Rules that span several keys or need the task (§3, §6.7, §8.2)."""
    task = spec.task
    if spec.primary_metric is not None and spec.primary_metric != hp.PRIMARY_METRIC[task]:
        raise SpecError(f"{loc(('primary_metric',))}: task {task} is optimised for "
                        f"{hp.PRIMARY_METRIC[task]!r} only, but got {spec.primary_metric!r}"
                        + did_you_mean(spec.primary_metric, [hp.PRIMARY_METRIC[task]]))

    # training_parameters: canonical names, types and applicability.
    raw_tp = _canonical_keys(spec.training_parameters, loc, ("training_parameters",))
    advanced = _advanced(raw_tp.pop("advanced_settings", None), loc)
    fixed_model = raw_tp.get("model_name")
    tp: dict[str, Any] = {}
    for k, v in raw_tp.items():
        where = loc(("training_parameters", k))
        tp[k] = hp.check_param(task, k, v, where, fixed_model if k != "model_name" else None)
    if tp.get("validation_metric_type") == "none" and (spec.limits.max_trials > 1 or spec.sweep is not None):
        raise SpecError(f"{loc(('training_parameters', 'validation_metric_type'))}: 'none' computes no "
                        f"{hp.PRIMARY_METRIC[task]}, which a sweep needs to compare trials and stop them early; "
                        "use voc, coco or coco_voc, or run a single trial (limits.max_trials: 1)")
    if "split_ratio" in tp and spec.validation_data_size is not None:
        raise SpecError(f"{loc(('training_parameters', 'split_ratio'))}: give either validation_data_size "
                        "or split_ratio, not both")

    if spec.properties.node_count_per_trial > 1 and tp.get("distributed") is False:
        raise SpecError(f"{loc(('properties', 'node_count_per_trial'))}: {spec.properties.node_count_per_trial} nodes "
                        "per trial need data-parallel training, but training_parameters.distributed is false; "
                        "remove one of them")
    space = None
    if spec.search_space is not None:
        if spec.sweep is None:
            raise SpecError(f"{loc(('search_space',))}: a search_space needs sweep.sampling_algorithm "
                            "(random, grid or bayesian)")
        space = [_check_subspace(task, sub, i, tp, loc) for i, sub in enumerate(spec.search_space)]
        _check_sampler(spec.sweep, space, loc)
    elif spec.sweep is not None:
        raise SpecError(f"{loc(('sweep',))}: sweep is given without a search_space; give a search_space, "
                        "or drop sweep to let AutoMode choose (limits.max_trials > 1)")
    else:  # one trial of the fixed values, or AutoMode's models with them
        models = job_models(task, tp, None, spec.limits.max_trials)
        at = _locations(loc, tp, {})
        try:
            check_combination(task, {**{k: [v] for k, v in tp.items()}, "model_name": models}, at)
        except SpecError as e:
            if "model_name" in tp or spec.limits.max_trials == 1:
                raise
            raise SpecError(f"{e} (AutoMode, limits.max_trials > 1 without a search_space, can pick "
                            f"{', '.join(models)})") from None
    _check_advanced(task, advanced, loc)
    return Job(spec=spec, source=source, base_dir=base_dir, text=text,
               training_parameters=tp, search_space=space, advanced=advanced)


def _locations(loc: Locator, tp: dict[str, Any], sub: dict[str, Any], base: tuple = ("training_parameters",)
               ) -> Callable[[str], str]:
    """name -> where the job sets it: the sub-space, training_parameters, else the sub-space (or section)."""
    def at(name: str) -> str:
        if name in sub:
            return loc(base + (name,))
        if name in tp:
            return loc(("training_parameters", name))
        return loc(base)
    return at


def _check_advanced(task: str, advanced: AdvancedSettings, loc: Locator) -> None:
    """§7.2: ``apply_automl_train_augmentations`` set for a task it does not act on is refused, not ignored.
    (``apply_mosaic_for_yolo`` in a job without yolov5 is accepted with a note, :meth:`Job.notes`: the spec's
    own combined example sets both flags for any detection job.)"""
    switch = "apply_automl_train_augmentations"
    if switch in advanced.model_fields_set and not hp.advanced_applies(switch, task):
        raise SpecError(f"{loc(('training_parameters', 'advanced_settings'))}: apply_automl_train_augmentations "
                        f"applies to object detection and instance segmentation only (§7.2), not to {task}; remove it")


def _advanced(value: Any, loc: Locator) -> AdvancedSettings:
    path = ("training_parameters", "advanced_settings")
    if value is None:
        return AdvancedSettings()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise SpecError(f"{loc(path)}: expected a JSON object in a string, "
                            f"but the JSON is invalid ({e.msg})") from None
    if not isinstance(value, dict):
        raise SpecError(f"{loc(path)}: expected a JSON object, but got {value!r}")
    try:
        return AdvancedSettings.model_validate(value)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(map(str, err["loc"]))
        what = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
        hint = did_you_mean(key, AdvancedSettings.model_fields) if err["type"] == "extra_forbidden" else ""
        raise SpecError(f"{loc(path)}: {what} {key!r}{hint}; expected keys: "
                        f"{', '.join(AdvancedSettings.model_fields)}") from None


def _check_subspace(task: str, sub: dict[str, Any], i: int, tp: dict, loc: Locator) -> dict[str, Any]:
    base = ("search_space", i)
    sub = _canonical_keys(sub, loc, base)
    models: list[str | None] = [tp.get("model_name")]
    if "model_name" in sub:
        d = sub["model_name"]
        if not isinstance(d, Choice):
            raise SpecError(f"{loc(base + ('model_name',))}: model_name must use type: choice, but got {d.type!r}")
        models = [hp.check_model_name(task, m, loc(base + ("model_name",))) for m in d.values]
    # the values each parameter can take in this sub-space, for the rules across parameters
    values: dict[str, list[Any]] = {k: [v] for k, v in tp.items()}
    drawn: set[str] = set()
    for name, dist in sub.items():
        where = loc(base + (name,))
        if name in tp:
            raise SpecError(f"{where}: {name!r} is both fixed in training_parameters and swept in search_space; "
                            "keep it in one place")
        if name in hp.NON_SWEEPABLE:
            raise SpecError(f"{where}: {name!r} cannot be swept")
        if name in hp.JOB_LEVEL:
            raise SpecError(f"{where}: {name!r} cannot be swept: {hp.JOB_LEVEL[name]}; set it in "
                            "training_parameters")
        if name == "model_name":
            values[name] = list(dist.values)
            continue
        for m in models:
            if isinstance(dist, Choice):
                dist.values = [hp.check_param(task, name, v, where, m) for v in dist.values]
            else:
                ends = _check_distribution(task, name, dist, where, m)
        if isinstance(dist, Choice):
            values[name] = list(dist.values)
        elif ends is None:  # unbounded: each trial draws its own value, which only the trial can check
            drawn.add(name)
        else:
            values[name] = sorted(set(ends))
            if len(values[name]) > 1:
                drawn.add(name)
    for name in tp:  # fixed parameters must apply to every model the sub-space can choose
        for m in models:
            if name != "model_name":
                hp.check_param(task, name, tp[name], loc(("training_parameters", name)), m)
    check_combination(task, values, _locations(loc, tp, sub, base), drawn)
    return sub


_KIND_WORDS = {"bool": "a boolean", "str": "a string", "grid": "a grid such as '3x2'"}


def _check_distribution(task: str, name: str, dist: Any, where: str, model: str | None) -> list[float] | None:
    """A distribution other than choice for one hyperparameter: it applies, it yields the parameter's type,
    and the smallest and largest values it produces are valid, so no trial fails on the value it drew.
    Returns those two values, or None when the distribution is unbounded (the normal family)."""
    p = hp.check_applies(task, name, where, model)
    if p.kind not in ("int", "float"):
        raise SpecError(f"{where}: {name} takes {_KIND_WORDS[p.kind]}: sweep it with type: choice, "
                        f"but got type: {dist.type}")
    if p.kind == "int" and not dist.integral:
        raise SpecError(f"{where}: {name} takes integers, but {dist.type} draws fractional values; use choice, "
                        "randint, or quniform / qloguniform / qnormal / qlognormal with a whole-number q")
    ends = dist.extremes()
    if ends is None:
        return None
    for (value, formula), which in zip(ends, ("smallest", "largest")):
        try:
            hp.check_param(task, name, value, "", model)
        except SpecError as e:
            hint = " (loguniform and qloguniform bounds are natural-log exponents, §8.1)" if "log" in dist.type else ""
            shown = formula if formula == f"{value:g}" else f"{formula} = {value:g}"
            raise SpecError(f"{where}: the {which} value this {dist.type} produces, {shown}, is not valid: "
                            f"{str(e).removeprefix(': ')}{hint}") from None
    return [value for value, _ in ends]


def _check_sampler(sweep: Sweep, space: list[dict[str, Any]], loc: Locator) -> None:
    algo = sweep.sampling_algorithm
    for i, sub in enumerate(space):
        for name, dist in sub.items():
            if algo == "grid" and not isinstance(dist, Choice):
                raise SpecError(f"{loc(('search_space', i, name))}: grid sampling takes only type: choice, "
                                f"but got {dist.type!r}")
            if algo == "bayesian" and dist.type not in ("choice", "uniform", "quniform"):
                raise SpecError(f"{loc(('search_space', i, name))}: bayesian sampling takes only choice, uniform "
                                f"and quniform, but got {dist.type!r}")
    if algo == "bayesian":
        if len(space) > 1:
            raise SpecError(f"{loc(('search_space',))}: bayesian sampling takes one sub-space, "
                            f"but got {len(space)} (conditional spaces need random or grid)")
        if sweep.early_termination is not None:
            raise SpecError(f"{loc(('sweep', 'early_termination'))}: bayesian sampling cannot be combined with "
                            "an early_termination policy (§8.2); remove one of them")


# layers_to_freeze groups of the detectors' resnet_backbone family (§6.3); classifiers: trainers.models.classifiers
_BOX_FREEZE_GROUPS = 5
_YOLO_FREEZE_GROUPS = 10  # yolov5_backbone: model.0. ... model.9. (§6.3)


def check_combination(task: str, values: Mapping[str, list[Any]], where: str | Callable[[str], str],
                      drawn: Collection[str] = ()) -> None:
    """Rules across parameters, checked at job time on every value each parameter can take, so a job that
    some trial could not train with fails before the sweep rather than trial by trial.

    ``values`` maps a canonical name to the values it can take: one for a fixed value, all of a choice,
    and the smallest and largest for another distribution (every rule here is monotone in each parameter,
    so the extremes stand for the values between them). ``drawn`` names the parameters that each trial
    draws from such a distribution. A parameter that is absent takes its default for the model.
    ``where``: the location of a parameter in the job (``name -> "FILE:LINE: yaml.path"``), or one
    location for all.
    """
    at = where if callable(where) else (lambda name: where)
    models = values.get("model_name", [hp.DEFAULT_MODEL[task]])
    for lo in values.get("min_size", []):
        for hi in values.get("max_size", []):
            if lo > hi:
                raise SpecError(f"{at('min_size')}: min_size ({lo:g}) must be <= max_size ({hi:g}): images are "
                                "resized so that the short side is min_size unless the long side would pass max_size")
    if hp.is_classification(task):
        for m in models:
            _check_crops(task, m, values, at, drawn)
    for n in values.get("layers_to_freeze", []):
        for m in models:
            if not n or hp.model_backend(m) != "builtin":
                continue
            if m == "yolov5":
                limit = _YOLO_FREEZE_GROUPS
            elif hp.has_boxes(task):
                limit = _BOX_FREEZE_GROUPS
            else:
                from trainers.models.classifiers import get_entry  # torch: only when a job freezes layers

                groups = get_entry(m).freeze_groups
                if groups is None:
                    raise SpecError(f"{at('layers_to_freeze')}: layers_to_freeze: model {m} has no layer groups "
                                    "to freeze (§6.3)")
                limit = len(groups)
            if n > limit:
                got = "it can be" if "layers_to_freeze" in drawn else "got"
                raise SpecError(f"{at('layers_to_freeze')}: layers_to_freeze: {m} has {limit} layer groups "
                                f"(§6.3), but {got} {n:g}")


_CROPS = ("training_crop_size", "validation_crop_size", "validation_resize_size")


def _check_crops(task: str, model: str, values: Mapping[str, list[Any]], at: Callable[[str], str],
                 drawn: Collection[str]) -> None:
    """§6.4: ``validation_resize_size >= validation_crop_size``, and the ViTs need equal training and
    validation crops (their position embedding is built for one input size)."""
    given = {n for n in _CROPS if n in values or n in drawn}
    if not given:
        return  # the model's defaults, which fit
    unbounded = {n for n in given if n not in values}  # drawn from the normal family: any value
    defaults = hp.task_model_defaults(task, model)
    v = {n: values.get(n) or [defaults[n]] for n in _CROPS}
    resize, crop = "validation_resize_size", "validation_crop_size"
    if not {resize, crop} & unbounded and min(v[resize]) < max(v[crop]):
        name = crop if crop in given else resize
        raise SpecError(f"{at(name)}: validation_resize_size ({min(v[resize]):g}) must be >= validation_crop_size "
                        f"({max(v[crop]):g}): the validation crop is cut from the resized image (§6.4)")
    train, valid = "training_crop_size", "validation_crop_size"
    if not {train, valid} & given or hp.model_backend(model) != "builtin":
        return
    unequal = bool({train, valid} & set(drawn)) or len(set(v[train]) | set(v[valid])) > 1
    if not unequal:
        return
    from trainers.models.classifiers import fixed_input  # torch: only when a job sets unequal crops

    if fixed_input(model):
        name = next((n for n in (train, valid) if n in drawn), None) or (train if train in given else valid)
        why = (f"{name} is drawn from a distribution for each trial, independently of the other crop; fix both, "
               "or give each value its own sub-space" if name in drawn else
               f"they can be {', '.join(f'{x:g}' for x in v[train])} and {', '.join(f'{x:g}' for x in v[valid])}")
        raise SpecError(f"{at(name)}: {model} needs training_crop_size == validation_crop_size for every trial "
                        f"(§6.4), but {why}")
