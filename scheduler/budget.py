"""AutoMode's time budget: from what an epoch costs here to how many trials, how many epochs, which input size and how
many trials at a time, so that every planned trial starts and the best one trains its whole schedule inside
``limits.timeout_minutes`` (SPEC §4.1; §13 A5: AutoMode must honour ``max_trials``, ``max_concurrent_trials`` and
``timeout_minutes``).

The cost is measured on the cluster before the sweep (``scheduler.costprobe``); everything here is arithmetic on it,
so it is tested with injected costs.

The time model, conservative where it has to guess:

* An epoch of a model at an input size: training images x measured seconds per training image, validation images x
  measured seconds per validation image (every ``evaluation_frequency`` epochs), and a model package written twice
  (the trial writes it, Tune copies it into the run's storage) at every evaluation, as if every epoch improved.
  Seconds per image between the two measured sizes follow ``a + b * size**2``: ``b`` the convolutions, ``a`` what
  does not shrink with the size (decoding, the optimiser step, kernel launches).
* A trial: a fixed overhead (measured: process start and imports, model build with its weights, loaders; plus
  :data:`TUNE_TRIAL_S` for Tune's own start and stop of a trial, estimated) and its epochs.
* ASHA: the first trial (ASHA has nothing to compare it with at its rungs) and the best trial run every epoch;
  every other trial runs what ASHA gives a trial of random rank: its grace period, then each later rung with
  probability 1/rf, 1/rf^2 ... (more than the "stopped at the grace period" floor). In the worst order the best
  trial starts last.
* The trials go onto ``concurrency`` slots in that order, each as soon as a slot is free; the trials take until the
  last one ends.
* The trials may fill :data:`SAFETY` of what the limit leaves after the work already done (data, Ray's start, the
  measurement) and :data:`FINISH_S` (leaderboard, best model, report, tracking after the trials).

The choice: the most trials, up to ``max_trials``, that fit with at least :data:`MIN_EPOCHS` epochs at the smallest
input size; for that many trials, the epochs (up to the default) and input size (up to the preferred one) that fit,
both shrunk by about the same fraction. When not even one such trial fits, one trial with the epochs that fit. What
``training_parameters`` fixed (epochs, input size) is kept: then only the number of trials and concurrency adapt.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

# The one table of the budget's assumptions (automode.json repeats them under "assumptions").
SAFETY = 0.8  # share of the time left the trials may fill: trial times vary, and the driver shares the CPUs
FINISH_S = 20.0  # leaderboard, best package, predictions, report, tracking after the trials (estimate; ~2 s seen)
TUNE_TRIAL_S = 3.0  # Tune's own start, bookkeeping and stop of a trial (estimate)
MIN_EPOCHS = 3  # a shorter trial spends most of its epochs in the learning-rate warm-up and tells little
DP_EFFICIENCY = 0.8  # a data-parallel trial of w workers trains w * DP_EFFICIENCY times as fast as one (all-reduce)
CHECKPOINT_WRITES = 2  # a package is written by the trial, then copied into the run's storage by Tune
SIZE_STEP = 32  # input sizes are multiples of this (YOLOv5's stride; the CNNs' output stride)


@dataclass(frozen=True)
class SizeRule:
    """Which hyperparameters set a model's input size (each a multiple of the size), and the sizes a plan may pick:
    from :meth:`preferred` down to ``smallest`` in steps of :data:`SIZE_STEP`.

    ``upscale``: how far the images' own size (their ``side``: "short" or "long") is enlarged at most when the
    preferred size is chosen; beyond it an input costs more compute and adds no detail."""

    params: tuple[tuple[str, float], ...]
    default: int
    smallest: int
    upscale: float
    side: str

    def settings(self, size: int) -> dict[str, int]:
        return {name: int(round(size * ratio)) for name, ratio in self.params}

    def preferred(self, native: tuple[int, int] | None) -> int:
        """The default size, or less for images that are small (``native``: their short and long side)."""
        if native is None:
            return self.default
        side = native[0] if self.side == "short" else native[1]
        wanted = SIZE_STEP * math.ceil(side * self.upscale / SIZE_STEP)
        return max(self.smallest, min(self.default, wanted))

    def ladder(self, native: tuple[int, int] | None) -> tuple[int, ...]:
        """The sizes a plan may pick, largest first."""
        top = self.preferred(native)
        below = range(SIZE_STEP * ((top - 1) // SIZE_STEP), self.smallest - 1, -SIZE_STEP)
        return (top, *[s for s in below if s < top])


# Classification CNNs: square crops; the validation resize keeps the defaults' ratio (256 for 224). ImageNet CNNs need
# 64 px or more for their stride-32 features; a 28 px image enlarged more than twice gains nothing.
CROP = SizeRule((("training_crop_size", 1.0), ("validation_crop_size", 1.0), ("validation_resize_size", 256 / 224)),
                224, 64, 2.0, "short")
# Detectors (torchvision, MMDetection): the short side goes to min_size, the long one at most to max_size (the
# defaults' ratio, 1333 for 600); images are not enlarged beyond their own size.
BOXES = SizeRule((("min_size", 1.0), ("max_size", 1333 / 600)), 600, 256, 1.0, "short")
# YOLOv5: the long side is letterboxed to image_size.
YOLO = SizeRule((("image_size", 1.0),), 640, 256, 1.0, "long")


@dataclass(frozen=True)
class ModelCost:
    """What one model costs on a trial's resources, measured at one or two input sizes.

    ``points``: (input size, or None for a model whose size is fixed; seconds per training image; seconds per
    validation image). ``build_s``: model build with its weights, loaders; ``checkpoint_s``: one model package."""

    model_name: str
    points: tuple[tuple[int | None, float, float], ...]
    build_s: float
    checkpoint_s: float

    def per_image(self, size: int | None) -> tuple[float, float]:
        """(training, validation) seconds per image at ``size``: ``a + b * size**2`` through the measured points."""
        pts = sorted(self.points, key=lambda p: p[0] or 0)
        if size is None or len(pts) == 1 or pts[0][0] is None:
            return pts[-1][1], pts[-1][2]
        (s0, t0, v0), (s1, t1, v1) = pts[0], pts[-1]
        if s0 == s1:
            return t1, v1
        x = (size * size - s0 * s0) / (s1 * s1 - s0 * s0)
        x = min(1.0, max(0.0, x))  # never beyond what was measured
        return t0 + x * (t1 - t0), v0 + x * (v1 - v0)


@dataclass(frozen=True)
class Cost:
    """The measured cost of the models a plan may train. ``start_s``: a trial's process start and imports;
    ``workers``: data-parallel workers per trial (the measurement is one worker's)."""

    models: tuple[ModelCost, ...]
    start_s: float
    workers: int = 1
    probe_s: float = 0.0  # what the measurement took (already part of Request.spent_s)
    device: str = "cpu"

    def model(self, name: str) -> ModelCost:
        for m in self.models:
            if m.model_name == name:
                return m
        raise KeyError(f"no measured cost for {name}")


@dataclass(frozen=True)
class Request:
    """What the plan must honour and what it may shape.

    ``ladders``: per model the input sizes it may pick, largest (preferred) first; empty: the model's input size is
    fixed (by ``training_parameters`` or by the model). ``grace(epochs)``: ASHA's grace period for that many epochs.
    ``left_s``: what the limit leaves for the trials and finishing; ``spent_s``: the job's time before the trials."""

    max_trials: int
    concurrency: int
    train_images: int
    valid_images: int
    target_epochs: int
    epochs_fixed: bool
    ladders: dict[str, tuple[int, ...]]
    lead: str
    grace: Callable[[int], int]
    reduction_factor: float
    left_s: float
    spent_s: float = 0.0
    limit_given: bool = True
    eval_every: int = 1
    log_training_metrics: bool = False
    sizes_fixed: bool = False  # training_parameters fixed the input size (a note says so)


@dataclass(frozen=True)
class BudgetPlan:
    """The budget's choice. ``sizes``: per model its input size (None: the model's fixed one); ``epoch_s``: the dearest
    epoch of the chosen models at their sizes; ``predicted_s``: the whole job (None: not measured)."""

    trials: int
    epochs: int
    sizes: dict[str, int | None]
    concurrency: int
    max_trials: int
    measured: bool
    fits: bool
    epoch_s: float | None = None
    trial_overhead_s: float | None = None
    trials_s: float | None = None
    predicted_s: float | None = None
    limit_s: float | None = None  # the job's limit (given, or the default)
    limit_given: bool = True
    messages: tuple[str, ...] = ()
    cost: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["messages"] = list(self.messages)
        for k in ("epoch_s", "trial_overhead_s", "trials_s", "predicted_s", "limit_s"):
            if out[k] is not None:
                out[k] = round(out[k], 2)
        out["predicted_minutes"] = None if self.predicted_s is None else round(self.predicted_s / 60, 2)
        out["limit_minutes"] = None if self.limit_s is None else round(self.limit_s / 60, 2)
        out["assumptions"] = {"safety": SAFETY, "finish_s": FINISH_S, "tune_trial_s": TUNE_TRIAL_S,
                              "min_epochs": MIN_EPOCHS, "data_parallel_efficiency": DP_EFFICIENCY,
                              "checkpoint_writes": CHECKPOINT_WRITES,
                              "asha": "the first and the best trial run every epoch, the others ASHA's expectation "
                                      "for a trial of random rank (at least the grace period); the best starts last"}
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "BudgetPlan":
        keys = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in keys}
        kw["messages"] = tuple(kw.get("messages", ()))
        return cls(**kw)


def asha_epochs(epochs: int, grace: int, rf: float) -> float:
    """The epochs ASHA lets a trial of random rank run: every trial reaches the grace period; one in rf passes the
    first rung, one in rf^2 the second ... up to ``epochs``."""
    if grace >= epochs:
        return float(epochs)
    total, rung, k = float(grace), float(grace), 0
    while rung < epochs:
        k += 1
        nxt = min(float(epochs), grace * rf ** k)
        total += (nxt - rung) / rf ** k
        rung = nxt
    return total


def schedule_s(trials: int, epochs: int, epoch_s: float, overhead_s: float, concurrency: int, grace: int,
               rf: float) -> float:
    """Seconds from the first trial's start to the last one's end (the module docstring's model)."""
    full = overhead_s + epochs * epoch_s
    other = overhead_s + asha_epochs(epochs, grace, rf) * epoch_s
    order = [full] + [other] * max(0, trials - 2) + ([full] if trials >= 2 else [])
    slots = [0.0] * max(1, min(concurrency, trials))
    for d in order:
        heapq.heappush(slots, heapq.heappop(slots) + d)
    return max(slots)


def _epoch_s(m: ModelCost, size: int | None, req: Request, workers: int) -> float:
    train_pi, valid_pi = m.per_image(size)
    speed = workers * DP_EFFICIENCY if workers > 1 else 1.0
    evaluated = req.valid_images + (req.train_images if req.log_training_metrics else 0)
    return (req.train_images * train_pi + evaluated * valid_pi / req.eval_every) / speed \
        + CHECKPOINT_WRITES * m.checkpoint_s / req.eval_every


def _size_at(ladder: Sequence[int], k: int) -> int | None:
    return ladder[min(k, len(ladder) - 1)] if ladder else None


def fit(cost: Cost, req: Request) -> BudgetPlan:
    """The plan for ``req`` given ``cost`` (the module docstring says how it chooses)."""
    names = list(req.ladders)
    rungs = max([len(v) for v in req.ladders.values()] + [1])
    lead_ladder = req.ladders.get(req.lead, ())

    def sizes(k: int) -> dict[str, int | None]:
        return {n: _size_at(req.ladders[n], k) for n in names}

    epoch_at = [max(_epoch_s(cost.model(n), s, req, cost.workers) for n, s in sizes(k).items()) for k in range(rungs)]
    overhead = cost.start_s + max(cost.model(n).build_s for n in names) + TUNE_TRIAL_S
    room = max(0.0, (req.left_s - FINISH_S) * SAFETY)

    def length(n: int, e: int, k: int) -> float:
        return schedule_s(n, e, epoch_at[k], overhead, req.concurrency, req.grace(e), req.reduction_factor)

    def fits(n: int, e: int, k: int) -> bool:
        return length(n, e, k) <= room

    target = req.target_epochs
    least = target if req.epochs_fixed else min(MIN_EPOCHS, target)
    small = rungs - 1
    meaningful = fits(1, least, small)
    if meaningful:  # the most trials at the least epochs and size, then the best epochs and size for them
        lo, hi = 1, req.max_trials
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid, least, small) else (lo, mid - 1)
        n = lo
        best = None
        for k in range(rungs):
            e = next((e for e in range(target, least - 1, -1) if fits(n, e, k)), None)
            if e is None:
                continue
            frac = _size_at(lead_ladder, k) / lead_ladder[0] if lead_ladder else 1.0
            key = (min(e / target, frac), e, -k)
            if best is None or key > best[0]:
                best = (key, e, k)
        _, epochs, k = best
    else:  # not one meaningful trial: one trial, the epochs that fit at the smallest size
        n, k = 1, small
        epochs = target if req.epochs_fixed else next((e for e in range(least - 1, 0, -1) if fits(1, e, k)), 1)
    fits_all = fits(n, epochs, k)
    conc = max(1, min(req.concurrency, n))
    trials_s = length(n, epochs, k)
    plan = BudgetPlan(trials=n, epochs=epochs, sizes=sizes(k), concurrency=conc, max_trials=req.max_trials,
                      measured=True, fits=fits_all, epoch_s=epoch_at[k], trial_overhead_s=overhead, trials_s=trials_s,
                      predicted_s=req.spent_s + trials_s + FINISH_S,
                      limit_s=req.spent_s + req.left_s, limit_given=req.limit_given, cost=_cost_json(cost))
    return _with_messages(plan, req, cost, meaningful, lead_ladder)


def unmeasured(req: Request, why: str) -> BudgetPlan:
    """The plan when the cost could not be measured: ``max_trials`` trials of the target epochs at the preferred
    sizes, not fitted to the limit (the messages say why)."""
    sizes = {n: _size_at(v, 0) for n, v in req.ladders.items()}
    return BudgetPlan(trials=req.max_trials, epochs=req.target_epochs, sizes=sizes,
                      concurrency=max(1, min(req.concurrency, req.max_trials)), max_trials=req.max_trials,
                      measured=False, fits=False, limit_s=req.spent_s + req.left_s, limit_given=req.limit_given,
                      messages=(f"warning: AutoMode budget: the cost of an epoch could not be measured ({why}): "
                                f"{req.max_trials} trial(s) of {req.target_epochs} epochs, not fitted to the time "
                                "limit",))


def _cost_json(cost: Cost) -> dict[str, Any]:
    return {"device": cost.device, "workers": cost.workers, "start_s": round(cost.start_s, 2),
            "probe_s": round(cost.probe_s, 2),
            "models": {m.model_name: {"build_s": round(m.build_s, 2), "checkpoint_s": round(m.checkpoint_s, 3),
                                      "seconds_per_image": [{"size": s, "train": round(t, 5), "validation": round(v, 5)}
                                                            for s, t, v in m.points]}
                       for m in cost.models}}


def _minutes(s: float) -> str:
    return f"{s / 60:.1f}"


def _with_messages(plan: BudgetPlan, req: Request, cost: Cost, meaningful: bool,
                   lead_ladder: tuple[int, ...]) -> BudgetPlan:
    size = plan.sizes.get(req.lead)
    at = f" at {size} px" if size else ""
    limit = (f"limits.timeout_minutes ({_minutes(plan.limit_s)} min)" if req.limit_given else
             f"the default time limit ({_minutes(plan.limit_s)} min)")
    lines = [f"AutoMode budget: {plan.trials} trial(s) of up to {plan.epochs} epochs{at}, {plan.concurrency} at a "
             f"time; an epoch costs about {plan.epoch_s:.1f}s and a trial's start {plan.trial_overhead_s:.1f}s "
             f"(measured on {cost.device}); predicted {_minutes(plan.predicted_s)} minutes"
             + (f" of the {_minutes(plan.limit_s)} allowed" if req.limit_given else
                " (no limits.timeout_minutes given)")]
    least = req.target_epochs if req.epochs_fixed else min(MIN_EPOCHS, req.target_epochs)
    if plan.trials < req.max_trials and meaningful:
        lines.append(f"AutoMode budget: {limit} cannot hold {req.max_trials} meaningful trials (at least {least} "
                     f"epochs each): running {plan.trials}, each longer")
    elif not meaningful:
        lines.append(f"warning: AutoMode budget: {limit} cannot hold even one meaningful trial (at least {least} "
                     f"epochs): running 1 trial of {plan.epochs} epoch(s){at}"
                     + ("" if plan.fits else f", predicted to take {_minutes(plan.trials_s)} min: the timeout will "
                        "stop it"))
    if req.epochs_fixed:
        lines.append(f"AutoMode budget: number_of_epochs ({req.target_epochs}) is fixed in training_parameters: "
                     "only the number of trials and concurrency adapt")
    elif plan.epochs < req.target_epochs:
        lines.append(f"AutoMode budget: {plan.epochs} epochs instead of the default {req.target_epochs}, to fit the "
                     "limit")
    if req.sizes_fixed:
        lines.append("AutoMode budget: the input size is fixed in training_parameters: it is kept")
    elif lead_ladder and size is not None and size < lead_ladder[0]:
        lines.append(f"AutoMode budget: {size} px instead of {lead_ladder[0]} px, to fit the limit")
    return BudgetPlan(**{**plan.__dict__, "messages": tuple(lines)})
