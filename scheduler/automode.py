"""AutoMode (SPEC §4.1, §13 A5): the user gives a trial budget; visionsweep picks models and ranges.

The plan, written to ``automode.json`` in the run folder with the reasons:

1. A portfolio per task and hardware, ordered by expected value for the budget: the models that give
   the best accuracy per unit of compute first. On GPUs the task default (``vitb16r224``) leads; on a
   CPU-only cluster, where a ViT-B epoch costs ~20x a ResNet-18 epoch, the light convolutional models
   lead and the ViTs are left out. Detection and segmentation have their own portfolios of torchvision
   detectors (Faster R-CNN / RetinaNet, Mask R-CNN), light backbones first on CPU.
2. Trial 1 is the leading model at its default hyperparameters (§6.2): the baseline the spec's
   recommended workflow starts from.
3. The other trials sample a conditional space over the first ``m`` portfolio models, ``m`` growing
   with the budget (about one model per four trials), each with a learning-rate range around its
   default, momentum and weight decay.
4. ASHA stops the weak trials early (grace period: the learning-rate warm-up, at least 1/8 of the
   epochs; reduction factor 3), so the budget goes to the promising ones.

Fixed ``training_parameters`` (crop sizes, epochs ...) apply to every AutoMode trial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from scheduler.space import Distribution
from scheduler.spec import AshaPolicy
from trainers import hyperparameters as hp

_dist = TypeAdapter(Distribution).validate_python


@dataclass(frozen=True)
class Candidate:
    model_name: str
    why: str


# Ordered by expected accuracy for the compute spent (ImageNet top-1 vs. training FLOPs of the
# builders, and the fine-tuning recipes the defaults of §6 come from).
GPU_PORTFOLIO = (
    Candidate("vitb16r224", "task default; strongest fine-tuning results of the zoo at moderate cost"),
    Candidate("vits16r224", "ViT at a quarter of ViT-B's compute; good on small datasets"),
    Candidate("seresnext", "strong convolutional baseline, robust on small images"),
    Candidate("resnet50", "well-understood convolutional baseline"),
    Candidate("resnest50", "split-attention ResNet, more accurate than ResNet-50 at similar cost"),
    Candidate("mobilenetv2", "cheapest model; explores quickly"),
)
CPU_PORTFOLIO = (
    Candidate("resnet18", "best accuracy per CPU-second of the zoo on small inputs"),
    Candidate("mobilenetv2", "cheapest model of the zoo; explores quickly on CPU"),
    Candidate("resnet34", "deeper ResNet at ~2x ResNet-18's cost"),
    Candidate("resnet50", "bottleneck ResNet; worth its cost only with a larger budget"),
)


# Detection (yolov5, the spec's default, arrives with its own trainer): Faster R-CNN with a ResNet-50 FPN is
# the best-understood two-stage baseline; RetinaNet trades some accuracy on crowded scenes for one stage;
# the deeper and lighter backbones bracket it. On CPU the light backbones lead: an R-50 FPN step costs
# ~2.5x an R-18 FPN step at the same min_size.
GPU_DETECTION = (
    Candidate("fasterrcnn_resnet50_fpn", "two-stage detector, the strongest-understood baseline of the zoo"),
    Candidate("retinanet_resnet50_fpn", "one-stage focal-loss detector; robust to many easy background boxes"),
    Candidate("fasterrcnn_resnet101_fpn", "deeper backbone: more accurate on small or similar objects"),
    Candidate("fasterrcnn_resnet34_fpn", "lighter backbone; explores quickly"),
)
CPU_DETECTION = (
    Candidate("fasterrcnn_resnet18_fpn", "lightest two-stage detector of the zoo; best mAP per CPU-second"),
    Candidate("fasterrcnn_resnet34_fpn", "deeper basic-block backbone at ~2x the cost of ResNet-18"),
    Candidate("retinanet_resnet50_fpn", "one-stage detector; worth its cost with a larger budget"),
    Candidate("fasterrcnn_resnet50_fpn", "bottleneck backbone; worth its cost only with a larger budget"),
)
GPU_SEGMENTATION = (
    Candidate("maskrcnn_resnet50_fpn", "task default; the standard Mask R-CNN"),
    Candidate("maskrcnn_resnet101_fpn", "deeper backbone: finer masks on small objects"),
    Candidate("maskrcnn_resnet34_fpn", "lighter backbone; explores quickly"),
)
CPU_SEGMENTATION = (
    Candidate("maskrcnn_resnet18_fpn", "lightest Mask R-CNN of the zoo; best mask mAP per CPU-second"),
    Candidate("maskrcnn_resnet34_fpn", "deeper basic-block backbone at ~2x the cost of ResNet-18"),
    Candidate("maskrcnn_resnet50_fpn", "task default; worth its cost on CPU only with a larger budget"),
)
PORTFOLIOS = {
    (hp.MULTICLASS, True): GPU_PORTFOLIO, (hp.MULTICLASS, False): CPU_PORTFOLIO,
    (hp.MULTILABEL, True): GPU_PORTFOLIO, (hp.MULTILABEL, False): CPU_PORTFOLIO,
    (hp.DETECTION, True): GPU_DETECTION, (hp.DETECTION, False): CPU_DETECTION,
    (hp.SEGMENTATION, True): GPU_SEGMENTATION, (hp.SEGMENTATION, False): CPU_SEGMENTATION,
}


def portfolio(task: str, has_gpu: bool) -> tuple[Candidate, ...]:
    try:
        return PORTFOLIOS[(task, has_gpu)]
    except KeyError:
        raise ValueError(f"AutoMode has no portfolio for task {task}") from None


def _space_for(task: str, model_name: str, fixed: dict[str, Any]) -> dict[str, Any]:
    default_lr = hp.task_model_defaults(task, model_name)["learning_rate"]
    sub: dict[str, Any] = {"model_name": _dist({"type": "choice", "values": [model_name]})}
    if "learning_rate" not in fixed:
        # loguniform bounds are exponents (§8.1): default / 4 .. default * 3
        sub["learning_rate"] = _dist({"type": "loguniform", "min_value": math.log(default_lr / 4),
                                      "max_value": math.log(min(1.0, default_lr * 3))})
    if "momentum" not in fixed:
        sub["momentum"] = _dist({"type": "choice", "values": [0.85, 0.9, 0.95]})
    if "weight_decay" not in fixed:
        sub["weight_decay"] = _dist({"type": "choice", "values": [1e-4, 5e-4]})
    return sub


def plan(task: str, max_trials: int, fixed: dict[str, Any], has_gpu: bool) -> dict[str, Any]:
    """The AutoMode plan: first trial, conditional space, ASHA settings and the reasons."""
    cands = portfolio(task, has_gpu)
    if "model_name" in fixed:
        cands = tuple(c for c in cands if c.model_name == fixed["model_name"]) or \
            (Candidate(fixed["model_name"], "fixed in training_parameters"),)
    m = max(1, min(len(cands), math.ceil(max_trials / 4)))
    chosen = cands[:m]
    space = [_space_for(task, c.model_name, fixed) for c in chosen]
    if "model_name" in fixed:
        for sub in space:
            sub.pop("model_name")
    first = {} if "model_name" in fixed else {"model_name": chosen[0].model_name}
    epochs = fixed.get("number_of_epochs") or hp.task_model_defaults(task, chosen[0].model_name)["number_of_epochs"]
    # Judge trials only after the learning-rate warm-up: during it every trial is still near chance.
    warmup = fixed.get("warmup_cosine_lr_warmup_epochs", hp.PARAMS["warmup_cosine_lr_warmup_epochs"].default) \
        if fixed.get("learning_rate_scheduler", "warmup_cosine") == "warmup_cosine" else 0
    grace = max(1, min(epochs // 2, max(warmup, epochs // 8)))
    # the policy's other settings (reduction_factor) are the job file's defaults: one table, in scheduler.spec
    asha = AshaPolicy(type="asha", grace_period=grace, max_epochs=epochs).model_dump(exclude={"type"})
    return {
        "hardware": "gpu" if has_gpu else "cpu",
        "max_trials": max_trials,
        "first_trial": {"config": first, "why": "the leading model at its default hyperparameters (baseline)"},
        "models": [{"model_name": c.model_name, "why": c.why} for c in chosen],
        "left_out": [{"model_name": c.model_name, "why": "beyond the budget (about one model per 4 trials)"}
                     for c in cands[m:]],
        "space": space,
        "asha": asha,
        "why_asha": f"stops trials that trail at epochs grace_period * {asha['reduction_factor']:g}^i, so more "
                    "trials fit the same compute",
    }


def explain(p: dict[str, Any]) -> dict[str, Any]:
    """The plan as JSON for ``automode.json``."""
    out = dict(p)
    out["space"] = [{k: v.model_dump(mode="json") for k, v in sub.items()} for sub in p["space"]]
    return out
