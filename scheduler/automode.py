"""AutoMode (SPEC §4.1, §13 A5): the user gives a trial budget; visionsweep picks models and ranges.

The plan, written to ``automode.json`` in the run folder with the reasons:

1. A portfolio per task and hardware, ordered by expected value for the budget: the models that give
   the best accuracy per unit of compute first. On GPUs the task default (``vitb16r224``) leads; on a
   CPU-only cluster, where a ViT-B epoch costs ~20x a ResNet-18 epoch, the light convolutional models
   lead and the ViTs are left out. Detection and segmentation have their own portfolios of torchvision
   detectors (Faster R-CNN / RetinaNet, Mask R-CNN), light backbones first on CPU. Candidates of the
   optional back-ends (Hugging Face classifiers, MMDetection models, ``yolov5``) join where their extra is
   installed. Every candidate must have its pretrained weights somewhere the job can reach
   (``trainers.models.weights``): one that has none is left out, and ``automode.json`` says why.
2. Trial 1 is the leading model with its family's first fine-tuning recipe: the baseline the spec's
   recommended workflow starts from.
3. The other trials sample a conditional space over the first ``m`` portfolio models, ``m`` growing
   with the budget (about one model per four trials): each model once per recipe of its family (an
   optimiser with a learning-rate range for fine-tuning pretrained weights, :data:`RECIPES`), momentum
   and weight decay.
4. ASHA stops the weak trials early (grace period: the learning-rate warm-up, at least 1/8 of the
   epochs; reduction factor 3), so the budget goes to the promising ones.

With ``visionsweep.pretrained: false`` the models train from random initialisation: one recipe, the spec's
own optimiser (SGD), with a learning-rate range around each model's default.

5. The time budget (``scheduler.budget``): before the sweep the chosen models' cost is measured on the cluster
   (``scheduler.costprobe``), and the number of trials, their epochs, the input size and concurrency are chosen so
   that every trial starts and the best one trains its whole schedule inside ``limits.timeout_minutes``; when the
   limit cannot hold ``max_trials`` meaningful trials, fewer and longer ones run, and the job says so at start.

Fixed ``training_parameters`` (crop sizes, epochs, optimiser ...) apply to every AutoMode trial.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import TypeAdapter

from scheduler import budget as bd
from scheduler.policies.configs import AshaSettings
from scheduler.space import Distribution
from trainers import hyperparameters as hp
from trainers.errors import VisionsweepError

_dist = TypeAdapter(Distribution).validate_python


@dataclass(frozen=True)
class Candidate:
    """A model AutoMode may pick. ``variants``: settings it is tried with, in order; the first whose weights can be
    had is taken (YOLOv5: a model_size with published or stored weights)."""

    model_name: str
    why: str
    extra: str = ""  # the optional install it needs: huggingface | openmmlab | yolov5
    variants: tuple[tuple[tuple[str, Any], ...], ...] = ((),)


@dataclass(frozen=True)
class Recipe:
    """How a family is fine-tuned from pretrained weights: an optimiser, the learning rate of the first
    trial and the range the others sample (log-uniform)."""

    optimizer: str
    learning_rate: float
    low: float
    high: float


# Fine-tuning recipes per family, the first of each the first trial's. Measured on the bundled Fashion-MNIST
# with the real ImageNet MobileNetV2 (bench/pretrained_weights.py recipes, bench/RESULTS.md): AdamW at
# 3e-4..1e-3 and SGD at 0.003 fine-tune a pretrained CNN as well as or better than the spec's from-scratch
# default (SGD at 0.01) for the same epochs, and AdamW at 1e-4 is too slow. Transformers
# take the smaller AdamW rates of their model cards; detectors start from the spec's SGD (lr 0.005, §6.2),
# which is what their COCO weights were trained with, and try AdamW beside it.
RECIPES: dict[str, tuple[Recipe, ...]] = {
    "cnn": (Recipe("adamw", 3e-4, 1e-4, 2e-3), Recipe("sgd", 0.01, 0.003, 0.03)),
    "vit": (Recipe("adamw", 5e-5, 1e-5, 2e-4), Recipe("sgd", 0.0125, 0.003, 0.03)),
    "huggingface": (Recipe("adamw", 5e-5, 1e-5, 2e-4),),
    "detector": (Recipe("sgd", 0.005, 0.00125, 0.015), Recipe("adamw", 1e-4, 3e-5, 3e-4)),
    "yolov5": (Recipe("sgd", 0.01, 0.0025, 0.03),),
}


def family(task: str, model_name: str) -> str:
    backend = hp.model_backend(model_name)
    if backend in ("huggingface", "mmdetection"):
        return backend
    if model_name == "yolov5":
        return "yolov5"
    if hp.has_boxes(task):
        return "detector"
    return "vit" if model_name.startswith("vit") else "cnn"


def recipes(task: str, model_name: str, pretrained: bool = True) -> tuple[Recipe, ...]:
    """The recipes AutoMode samples for a model: its family's, or for an MMDetection model its own config's
    optimiser (the zoo's settings); from scratch, the model's default optimiser and learning rate."""
    d = hp.task_model_defaults(task, model_name)
    lr = d["learning_rate"]
    if not pretrained:
        return (Recipe(d["optimizer"], lr, lr / 4, min(1.0, lr * 3)),)
    f = family(task, model_name)
    if f == "mmdetection":
        return (Recipe(d["optimizer"], lr, lr / 4, min(1.0, lr * 3)),)
    return RECIPES[f]


# Ordered by expected accuracy for the compute spent (ImageNet top-1 vs. training FLOPs of the
# builders, and the fine-tuning recipes the defaults of §6 come from).
GPU_PORTFOLIO = (
    Candidate("vitb16r224", "task default; strongest fine-tuning results of the zoo at moderate cost"),
    Candidate("vits16r224", "ViT at a quarter of ViT-B's compute; good on small datasets"),
    Candidate("google/vit-base-patch16-224", "Hugging Face ViT-B (ImageNet-21k, fine-tuned on 1k): a curated "
                                             "model of §5.3", "huggingface"),
    Candidate("seresnext", "strong convolutional baseline, robust on small images"),
    Candidate("resnet50", "well-understood convolutional baseline"),
    Candidate("resnest50", "split-attention ResNet, more accurate than ResNet-50 at similar cost"),
    Candidate("facebook/deit-base-patch16-224", "Hugging Face DeiT-B, a curated model of §5.3", "huggingface"),
    Candidate("mobilenetv2", "cheapest model; explores quickly"),
)
CPU_PORTFOLIO = (
    Candidate("resnet18", "best accuracy per CPU-second of the zoo on small inputs"),
    Candidate("mobilenetv2", "cheapest model of the zoo; explores quickly on CPU"),
    Candidate("resnet34", "deeper ResNet at ~2x ResNet-18's cost"),
    Candidate("resnet50", "bottleneck ResNet; worth its cost only with a larger budget"),
)


# Detection: with their published weights, YOLOv5 (COCO) and the R-50 detectors (torchvision's COCO weights)
# lead on GPUs; the other depths start from an ImageNet backbone under fresh FPN and heads. On CPU the light
# backbones lead: an R-50 FPN step costs ~2.5x an R-18 FPN step at the same min_size.
GPU_DETECTION = (
    Candidate("yolov5", "task default (§5.1); one-stage COCO-pretrained detector, fast to fine-tune", "yolov5",
              ((("model_size", "medium"),), (("model_size", "small"),))),
    Candidate("fasterrcnn_resnet50_fpn", "two-stage detector with torchvision's COCO weights; the strongest-"
                                         "understood baseline of the zoo"),
    Candidate("retinanet_resnet50_fpn", "one-stage focal-loss detector with COCO weights; robust to many easy "
                                        "background boxes"),
    Candidate("mmd-3x-vfnet_r50-mdconv-c3-c5_fpn_ms-2x_coco", "VarifocalNet (MMDetection, curated in §5.3): "
                                                              "dense detector with a stronger COCO mAP", "openmmlab"),
    Candidate("fasterrcnn_resnet101_fpn", "deeper backbone: more accurate on small or similar objects"),
    Candidate("fasterrcnn_resnet34_fpn", "lighter backbone; explores quickly"),
)
CPU_DETECTION = (
    Candidate("yolov5", "YOLOv5-s: one-stage detector with COCO weights at a fraction of a two-stage detector's "
                        "cost per image", "yolov5", ((("model_size", "small"),),)),
    Candidate("fasterrcnn_resnet18_fpn", "lightest two-stage detector of the zoo; best mAP per CPU-second"),
    Candidate("fasterrcnn_resnet34_fpn", "deeper basic-block backbone at ~2x the cost of ResNet-18"),
    Candidate("retinanet_resnet50_fpn", "one-stage detector with COCO weights; worth its cost with a larger budget"),
    Candidate("fasterrcnn_resnet50_fpn", "COCO-pretrained two-stage detector; worth its cost only with a larger "
                                         "budget"),
)
GPU_SEGMENTATION = (
    Candidate("maskrcnn_resnet50_fpn", "task default; the standard Mask R-CNN, with torchvision's COCO weights"),
    Candidate("mmd-3x-mask-rcnn_swin-t-p4-w7_fpn_1x_coco", "Mask R-CNN on a Swin-T backbone (MMDetection, curated "
                                                           "in §5.3)", "openmmlab"),
    Candidate("maskrcnn_resnet101_fpn", "deeper backbone: finer masks on small objects"),
    Candidate("maskrcnn_resnet34_fpn", "lighter backbone; explores quickly"),
)
CPU_SEGMENTATION = (
    Candidate("maskrcnn_resnet18_fpn", "lightest Mask R-CNN of the zoo; best mask mAP per CPU-second"),
    Candidate("maskrcnn_resnet34_fpn", "deeper basic-block backbone at ~2x the cost of ResNet-18"),
    Candidate("maskrcnn_resnet50_fpn", "task default with COCO weights; worth its cost on CPU only with a larger "
                                       "budget"),
)
PORTFOLIOS = {
    (hp.MULTICLASS, True): GPU_PORTFOLIO, (hp.MULTICLASS, False): CPU_PORTFOLIO,
    (hp.MULTILABEL, True): GPU_PORTFOLIO, (hp.MULTILABEL, False): CPU_PORTFOLIO,
    (hp.DETECTION, True): GPU_DETECTION, (hp.DETECTION, False): CPU_DETECTION,
    (hp.SEGMENTATION, True): GPU_SEGMENTATION, (hp.SEGMENTATION, False): CPU_SEGMENTATION,
}
# What a CPU-only cluster's portfolio leaves out, and why (automode.json says it)
CPU_LEFT_OUT = {
    hp.MULTICLASS: "the ViTs, Hugging Face transformers and the 101/152-layer ResNets: an epoch costs 10-20x a "
                   "ResNet-18 epoch on CPU",
    hp.MULTILABEL: "the ViTs, Hugging Face transformers and the 101/152-layer ResNets: an epoch costs 10-20x a "
                   "ResNet-18 epoch on CPU",
    hp.DETECTION: "YOLOv5 beyond model_size small, MMDetection models and the 101/152-layer backbones: too slow per "
                  "CPU-second",
    hp.SEGMENTATION: "MMDetection models and the 101/152-layer backbones: too slow per CPU-second",
}
EXTRAS = {"huggingface": ("transformers",), "openmmlab": ("mmengine", "mmcv", "mmdet"),
          "yolov5": ("mmengine", "mmcv", "mmdet", "mmyolo")}
INSTALL = {"huggingface": "pip install 'visionsweep[huggingface]'", "openmmlab": "make openmmlab",
           "yolov5": "make openmmlab"}


@functools.lru_cache(maxsize=None)
def extra_installed(extra: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in EXTRAS[extra])


def portfolio(task: str, has_gpu: bool) -> tuple[Candidate, ...]:
    try:
        return PORTFOLIOS[(task, has_gpu)]
    except KeyError:
        raise ValueError(f"AutoMode has no portfolio for task {task}") from None


def size_rule(task: str, model_name: str, fixed: dict[str, Any]) -> bd.SizeRule | None:
    """How the budget may set a model's input size, or None where it is fixed: by ``training_parameters``, or by
    the model (ViTs and Hugging Face classifiers take the input size they were pretrained at)."""
    f = family(task, model_name)
    if f in ("vit", "huggingface"):
        return None
    rule = bd.YOLO if f == "yolov5" else bd.CROP if hp.is_classification(task) else bd.BOXES
    return None if any(name in fixed for name, _ in rule.params) else rule


def sizes_fixed(task: str, fixed: dict[str, Any]) -> bool:
    return any(name in fixed for rule in (bd.CROP, bd.BOXES, bd.YOLO) for name, _ in rule.params
               if task in hp.PARAMS[name].tasks)


def grace_period(epochs: int, fixed: dict[str, Any]) -> int:
    """ASHA's grace period: after the learning-rate warm-up (during it every trial is still near chance), at least
    1/8 of the epochs, at most half."""
    warmup = fixed.get("warmup_cosine_lr_warmup_epochs", hp.PARAMS["warmup_cosine_lr_warmup_epochs"].default) \
        if fixed.get("learning_rate_scheduler", "warmup_cosine") == "warmup_cosine" else 0
    return max(1, min(epochs // 2, max(warmup, epochs // 8)))


def _space_for(task: str, model_name: str, fixed: dict[str, Any], recipe: Recipe,
               settings: dict[str, Any]) -> dict[str, Any]:
    sub: dict[str, Any] = {"model_name": _dist({"type": "choice", "values": [model_name]})}
    for k, v in settings.items():  # the budget's epochs and input size, the candidate's variant: one value each
        sub[k] = _dist({"type": "choice", "values": [v]})
    if "optimizer" not in fixed:
        sub["optimizer"] = _dist({"type": "choice", "values": [recipe.optimizer]})
    if "learning_rate" not in fixed:
        # loguniform bounds are exponents (§8.1)
        sub["learning_rate"] = _dist({"type": "loguniform", "min_value": math.log(recipe.low),
                                      "max_value": math.log(min(1.0, recipe.high))})
    if recipe.optimizer == "sgd" and "momentum" not in fixed:
        sub["momentum"] = _dist({"type": "choice", "values": [0.85, 0.9, 0.95]})
    if "weight_decay" not in fixed:
        sub["weight_decay"] = _dist({"type": "choice", "values": [1e-4, 5e-4] if recipe.optimizer == "sgd"
                                     else [1e-4, 1e-2]})
    return sub


def _variants(c: Candidate, fixed: dict[str, Any]) -> list[dict[str, Any]]:
    """The candidate's variants less what ``training_parameters`` fixed (a fixed model_size is the only one)."""
    out = [{k: v for k, v in var if k not in fixed} for var in c.variants]
    return [dict(t) for t in dict.fromkeys(tuple(v.items()) for v in out)]


def plan(task: str, max_trials: int, fixed: dict[str, Any], has_gpu: bool,
         available: Callable[..., str | None] | None = None, pretrained: bool = True,
         budget: bd.BudgetPlan | None = None, max_latency_ms: float | None = None) -> dict[str, Any]:
    """The AutoMode plan: first trial, conditional space, ASHA settings and the reasons.

    ``available(model_name, **settings)``: None when the model's pretrained weights can be had (with a candidate's
    variant settings, e.g. ``model_size="small"``), else why not (None for the argument: every candidate is
    assumed to have them, as when a job file is validated). ``budget``: the number of trials, epochs and input
    sizes fitted to the time limit (:func:`fit_budget`); None: ``max_trials`` at the default epochs and sizes.
    ``max_latency_ms`` (``visionsweep.max_latency_ms``): a model whose inference took longer than that an image in
    the cost probe, even in batches (so surely at batch 1), is left out while another model remains."""
    considered: list[dict[str, Any]] = []
    cands: list[tuple[Candidate, dict[str, Any]]] = []
    pool = portfolio(task, has_gpu)
    if "model_name" in fixed:
        pool = tuple(c for c in pool if c.model_name == fixed["model_name"]) or \
            (Candidate(fixed["model_name"], "fixed in training_parameters"),)
    for c in pool:
        why_not, settings = None, None
        if c.extra and not extra_installed(c.extra):
            why_not = f"needs the {c.extra} extra, not installed here ({INSTALL[c.extra]})"
        elif available is not None:
            reasons = []
            for v in _variants(c, fixed):  # the same weights check for every candidate, per variant
                r = available(c.model_name, **v)
                if r is None:
                    settings = v
                    break
                reasons.append(r)
            why_not = None if settings is not None else "no pretrained weights can be had: " + "; ".join(reasons)
        else:
            settings = _variants(c, fixed)[0]
        considered.append({"model_name": c.model_name, "considered": why_not is None, "why": why_not or c.why,
                           **({"settings": settings} if settings else {})})
        if why_not is None:
            cands.append((c, settings or {}))
    if not cands:
        raise VisionsweepError("AutoMode found no candidate model it can train here: " + "; ".join(
            f"{c['model_name']}: {c['why']}" for c in considered))
    trials = budget.trials if budget is not None else max_trials
    m = max(1, min(len(cands), math.ceil(trials / 4)))
    chosen = cands[:m]
    slow = too_slow(budget, [c.model_name for c, _ in chosen], max_latency_ms)
    if slow and len(slow) < len(chosen):
        chosen = [(c, v) for c, v in chosen if c.model_name not in slow]
    else:
        slow = {}
    lead_name = chosen[0][0].model_name
    epochs = budget.epochs if budget is not None else \
        fixed.get("number_of_epochs") or hp.task_model_defaults(task, lead_name)["number_of_epochs"]

    def settings_of(name: str, variant: dict[str, Any]) -> dict[str, Any]:
        """What every trial of the model takes besides its recipe: its variant, and the budget's epochs and size."""
        out = dict(variant)
        if budget is None:
            return out
        if "number_of_epochs" not in fixed:
            out["number_of_epochs"] = epochs
        rule, size = size_rule(task, name, fixed), budget.sizes.get(name)
        if rule is not None and size:
            out.update(rule.settings(size))
        return out

    space = [_space_for(task, c.model_name, fixed, r, settings_of(c.model_name, v))
             for c, v in chosen for r in recipes(task, c.model_name, pretrained)]
    if "model_name" in fixed:
        for sub in space:
            sub.pop("model_name")
    lead = recipes(task, lead_name, pretrained)[0]
    first = {} if "model_name" in fixed else {"model_name": lead_name}
    if pretrained and "optimizer" not in fixed and "learning_rate" not in fixed:
        first.update(optimizer=lead.optimizer, learning_rate=lead.learning_rate)
    first.update(settings_of(lead_name, chosen[0][1]))
    # the policy's other settings (reduction_factor) are the job file's defaults: one table, in scheduler.spec
    asha = AshaSettings(type="asha", grace_period=grace_period(epochs, fixed), max_epochs=epochs).model_dump(
        exclude={"type"})
    out = {
        "hardware": "gpu" if has_gpu else "cpu",
        "max_trials": max_trials,
        "trials": trials,
        "pretrained": pretrained,
        "first_trial": {"config": first, "why": "the leading model with its family's first fine-tuning recipe "
                        "(baseline)" if pretrained else "the leading model at its default hyperparameters (baseline)"},
        "models": [{"model_name": c.model_name, "why": c.why, **({"settings": v} if v else {}),
                    "recipes": [{"optimizer": r.optimizer, "learning_rate": [r.low, r.high]}
                                for r in recipes(task, c.model_name, pretrained)]} for c, v in chosen],
        "left_out": [{"model_name": n, "why": f"inference took {ms:.2f} ms an image in the cost probe, in batches: "
                      f"over max_latency_ms {max_latency_ms:g} at batch 1 for sure"} for n, ms in slow.items()]
                    + [{"model_name": c.model_name, "why": "beyond the budget (about one model per 4 trials)"}
                     for c, _ in cands[m:]] + [{"model_name": c["model_name"], "why": c["why"]}
                                                for c in considered if not c["considered"]],
        "considered": considered,
        "space": space,
        "asha": asha,
        "why_asha": f"stops trials that trail at epochs grace_period * {asha['reduction_factor']:g}^i, so more "
                    "trials fit the same compute",
    }
    if budget is not None:
        out["budget"] = budget.to_json()
    if not has_gpu:
        out["not_in_the_cpu_portfolio"] = CPU_LEFT_OUT[task]
    return out


def too_slow(budget: bd.BudgetPlan | None, names: list[str], max_latency_ms: float | None) -> dict[str, float]:
    """The models among ``names`` whose validation pass in the cost probe took more than ``max_latency_ms`` an image
    at the smallest size measured (ms an image); batched inference is never slower an image than batch 1."""
    if budget is None or max_latency_ms is None:
        return {}
    models = (budget.cost or {}).get("models", {})
    out = {}
    for name in names:
        points = models.get(name, {}).get("seconds_per_image", [])
        if points:
            ms = min(p["validation"] for p in points) * 1e3
            if ms > max_latency_ms:
                out[name] = round(ms, 3)
    return out


def probe_runs(task: str, p: dict[str, Any], fixed: dict[str, Any],
               native: tuple[int, int] | None) -> list[tuple[str, int | None, dict[str, Any]]]:
    """What the cost probe trains: (model, input size, sampled values) for each model of an unbudgeted plan ``p`` at
    the largest and the smallest input size the budget may pick (one size where it is fixed)."""
    runs = []
    for i, mdl in enumerate(p["models"]):
        name = mdl["model_name"]
        config = {"model_name": name} if "model_name" not in fixed else {}
        if i == 0:
            config.update({k: v for k, v in p["first_trial"]["config"].items() if k in ("optimizer", "learning_rate")})
        config.update(mdl.get("settings", {}))
        rule = size_rule(task, name, fixed)
        ladder = rule.ladder(native) if rule is not None else ()
        for size in dict.fromkeys([ladder[0], ladder[-1]] if ladder else [None]):
            runs.append((name, size, {**config, **(rule.settings(size) if size else {})}))
    return runs


def fit_budget(task: str, p: dict[str, Any], fixed: dict[str, Any], cost: bd.Cost | None, *,
               train_images: int, valid_images: int, concurrency: int, left_s: float, spent_s: float,
               limit_given: bool, native: tuple[int, int] | None, why_unmeasured: str = "") -> bd.BudgetPlan:
    """The budget for an unbudgeted plan ``p`` (its models and leading model) given the measured ``cost`` (None:
    not measured, ``why_unmeasured`` says why): the request AutoMode makes of ``scheduler.budget``."""
    ladders = {}
    for mdl in p["models"]:
        rule = size_rule(task, mdl["model_name"], fixed)
        ladders[mdl["model_name"]] = rule.ladder(native) if rule is not None else ()
    lead = p["models"][0]["model_name"]
    req = bd.Request(
        max_trials=p["max_trials"], concurrency=concurrency, train_images=train_images, valid_images=valid_images,
        target_epochs=fixed.get("number_of_epochs") or hp.task_model_defaults(task, lead)["number_of_epochs"],
        epochs_fixed="number_of_epochs" in fixed, ladders=ladders, lead=lead,
        grace=functools.partial(grace_period, fixed=fixed), reduction_factor=p["asha"]["reduction_factor"],
        left_s=left_s, spent_s=spent_s, limit_given=limit_given,
        eval_every=int(fixed.get("evaluation_frequency") or 1),
        log_training_metrics=bool(fixed.get("log_training_metrics")), sizes_fixed=sizes_fixed(task, fixed))
    return bd.fit(cost, req) if cost is not None else bd.unmeasured(req, why_unmeasured)


def explain(p: dict[str, Any]) -> dict[str, Any]:
    """The plan as JSON for ``automode.json``."""
    out = dict(p)
    out["space"] = [{k: v.model_dump(mode="json") for k, v in sub.items()} for sub in p["space"]]
    return out
