"""AutoMode's time budget (scheduler.budget) with injected costs, and the AutoMode plan it shapes.

The budget is arithmetic on a measured cost, so these tests give it the cost directly: seconds per training and
validation image, a model build, a checkpoint and a trial's start. The whole-run test, with the cost measured on a
real local Ray, is in tests/test_automode_run.py.
"""

from __future__ import annotations

import functools

import pytest

from scheduler import automode
from scheduler import budget as bd
from trainers import hyperparameters as hp

MC = hp.MULTICLASS


def cost(train_s: float = 0.01, valid_s: float = 0.004, *, name: str = "mobilenetv2", build_s: float = 2.0,
         checkpoint_s: float = 0.2, start_s: float = 5.0, sizes=(None,), workers: int = 1) -> bd.Cost:
    """A measured cost: ``train_s`` / ``valid_s`` seconds per image at the largest size (at the others in proportion
    to the pixels)."""
    top = max((s for s in sizes if s), default=None)
    points = tuple((s, train_s * (s / top) ** 2 if s else train_s, valid_s * (s / top) ** 2 if s else valid_s)
                   for s in sizes)
    return bd.Cost((bd.ModelCost(name, points, build_s, checkpoint_s),), start_s=start_s, workers=workers)


def request(limit_min: float | None = 10, *, max_trials: int = 3, concurrency: int = 1, train: int = 240,
            valid: int = 60, epochs: int = 15, fixed_epochs: bool = False, ladder=(), spent_s: float = 20.0,
            name: str = "mobilenetv2") -> bd.Request:
    limit_s = (limit_min if limit_min is not None else 10080) * 60
    return bd.Request(max_trials=max_trials, concurrency=concurrency, train_images=train, valid_images=valid,
                      target_epochs=epochs, epochs_fixed=fixed_epochs, ladders={name: tuple(ladder)}, lead=name,
                      grace=functools.partial(automode.grace_period, fixed={}), reduction_factor=3.0,
                      left_s=limit_s - spent_s, spent_s=spent_s, limit_given=limit_min is not None)


def room(req: bd.Request) -> float:
    return (req.left_s - bd.FINISH_S) * bd.SAFETY


# --- the time model ----------------------------------------------------------------------------------------------

def test_asha_gives_a_trial_of_random_rank_its_grace_period_and_a_share_of_the_later_rungs():
    # 15 epochs, grace 2, factor 3: rungs at 2 and 6; one in 3 goes on to 6, one in 9 to 15
    assert bd.asha_epochs(15, 2, 3.0) == pytest.approx(2 + 4 / 3 + 9 / 9)
    # a grace period as long as the schedule: every trial runs it all
    assert bd.asha_epochs(4, 4, 3.0) == 4


def test_the_schedule_puts_the_best_trial_last_on_the_first_free_slot():
    # 3 trials of 15 epochs of 10 s (overhead 5 s), grace 2: first and best full (155 s), the other 5 + 43.3 s
    other = 5 + bd.asha_epochs(15, 2, 3.0) * 10
    assert bd.schedule_s(3, 15, 10.0, 5.0, 1, 2, 3.0) == pytest.approx(155 + other + 155)
    # two slots: the other trial ends first, the best starts there
    assert bd.schedule_s(3, 15, 10.0, 5.0, 2, 2, 3.0) == pytest.approx(other + 155)
    assert bd.schedule_s(1, 15, 10.0, 5.0, 4, 2, 3.0) == pytest.approx(155)


def test_seconds_per_image_between_two_measured_sizes_follow_the_pixels():
    m = bd.ModelCost("resnet18", ((224, 0.04, 0.01), (64, 0.01, 0.002)), 1.0, 0.1)
    assert m.per_image(224) == (0.04, 0.01) and m.per_image(64) == (0.01, 0.002)
    x = (160 ** 2 - 64 ** 2) / (224 ** 2 - 64 ** 2)
    assert m.per_image(160) == pytest.approx((0.01 + x * 0.03, 0.002 + x * 0.008))
    # never beyond what was measured
    assert m.per_image(32) == (0.01, 0.002) and m.per_image(512) == (0.04, 0.01)


# --- the choice --------------------------------------------------------------------------------------------------

def test_a_ten_minute_limit_holds_all_three_trials_at_the_default_epochs():
    req = request(10)
    p = bd.fit(cost(), req)
    assert (p.trials, p.epochs, p.concurrency) == (3, 15, 1) and p.fits and p.measured
    # every trial starts and the best trains its 15 epochs inside the limit: the prediction the plan makes
    assert p.trials_s <= room(req) and p.predicted_s <= 10 * 60
    assert p.predicted_s == pytest.approx(req.spent_s + p.trials_s + bd.FINISH_S)
    # an epoch: 240 x 0.01 s training, 60 x 0.004 s validation, a checkpoint written twice
    assert p.epoch_s == pytest.approx(2.4 + 0.24 + 2 * 0.2)
    assert p.trial_overhead_s == pytest.approx(5 + 2 + bd.TUNE_TRIAL_S)
    assert p.messages[0].startswith("AutoMode budget: 3 trial(s) of up to 15 epochs, 1 at a time")
    assert len(p.messages) == 1  # nothing shrunk, nothing to explain


def test_a_tiny_limit_runs_fewer_longer_trials_and_says_so():
    c, req = cost(train_s=0.05), request(3)  # an epoch ~13 s: 3 minutes hold 2 meaningful trials, not 3
    p = bd.fit(c, req)
    assert p.trials == 2 and p.fits and p.epochs >= bd.MIN_EPOCHS

    def length(n, e):
        return bd.schedule_s(n, e, p.epoch_s, p.trial_overhead_s, 1, automode.grace_period(e, {}), 3.0)
    # three trials of the least meaningful epochs do not fit; the two trials take every epoch that does
    assert length(3, bd.MIN_EPOCHS) > room(req) >= length(2, p.epochs) == p.trials_s
    assert length(2, p.epochs + 1) > room(req)
    assert any("cannot hold 3 meaningful trials" in m and "running 2, each longer" in m for m in p.messages)
    assert any(f"{p.epochs} epochs instead of the default 15" in m for m in p.messages)
    # with more time the two trials are longer ones
    assert bd.fit(c, request(4)).epochs > p.epochs or bd.fit(c, request(4)).trials == 3


def test_a_limit_too_short_for_one_meaningful_trial_runs_one_and_warns():
    p = bd.fit(cost(train_s=1.0), request(2))  # an epoch ~4 min
    assert p.trials == 1 and p.epochs == 1 and not p.fits
    assert any(m.startswith("warning: AutoMode budget:") and "cannot hold even one meaningful trial" in m
               and "the timeout will stop it" in m for m in p.messages)


def test_concurrency_fits_more_trials():
    c = cost(train_s=0.1)
    one = bd.fit(c, request(5, max_trials=4, concurrency=1))
    two = bd.fit(c, request(5, max_trials=4, concurrency=2))
    assert one.trials < two.trials == 4 and two.concurrency == 2


def test_fixed_epochs_are_kept_and_only_the_number_of_trials_adapts():
    p = bd.fit(cost(train_s=0.1), request(3, epochs=10, fixed_epochs=True))
    assert p.epochs == 10 and p.trials < 3
    assert any("number_of_epochs (10) is fixed in training_parameters: only the number of trials and concurrency "
               "adapt" in m for m in p.messages)
    # even when one trial of them does not fit: the user's epochs, one trial, a warning
    tight = bd.fit(cost(train_s=1.0), request(2, epochs=10, fixed_epochs=True))
    assert (tight.trials, tight.epochs, tight.fits) == (1, 10, False)


def test_the_input_size_shrinks_with_the_epochs_when_the_limit_needs_it():
    ladder = bd.CROP.ladder((500, 500))
    assert ladder == (224, 192, 160, 128, 96, 64)
    c = cost(train_s=0.05, valid_s=0.02, sizes=(224, 64))
    roomy = bd.fit(c, request(60, ladder=ladder))
    assert roomy.sizes == {"mobilenetv2": 224} and roomy.epochs == 15
    tight = bd.fit(c, request(5, ladder=ladder))
    assert tight.trials == 3 and tight.sizes["mobilenetv2"] < 224 and tight.epochs < 15
    # about the same share of each is given up: neither is cut to its floor while the other stays whole
    assert abs(tight.epochs / 15 - tight.sizes["mobilenetv2"] / 224) < 0.3
    assert any(f"{tight.sizes['mobilenetv2']} px instead of 224 px" in m for m in tight.messages)


def test_without_a_time_limit_the_plan_still_predicts_its_minutes():
    p = bd.fit(cost(), request(None))
    assert (p.trials, p.epochs) == (3, 15) and p.predicted_s is not None and not p.limit_given
    assert "no limits.timeout_minutes given" in p.messages[0]
    assert p.to_json()["predicted_minutes"] == pytest.approx(p.predicted_s / 60, abs=0.01)


def test_data_parallel_workers_share_an_epoch():
    one = bd.fit(cost(train_s=0.1), request(60))
    four = bd.fit(cost(train_s=0.1, workers=4), request(60))
    assert four.epoch_s < one.epoch_s / 2


def test_unmeasured_plans_the_defaults_and_says_why():
    p = bd.unmeasured(request(10, ladder=(64,)), "the cost probe did not finish within 60s")
    assert (p.trials, p.epochs, p.sizes, p.measured, p.predicted_s) == (3, 15, {"mobilenetv2": 64}, False, None)
    assert "could not be measured (the cost probe did not finish within 60s)" in p.messages[0]


def test_the_plan_round_trips_through_automode_json():
    p = bd.fit(cost(), request(10))
    d = p.to_json()
    assert d["limit_minutes"] == 10 and d["assumptions"]["safety"] == bd.SAFETY
    back = bd.BudgetPlan.from_json(d)
    assert (back.trials, back.epochs, back.sizes, back.concurrency) == (p.trials, p.epochs, p.sizes, p.concurrency)


# --- input sizes -------------------------------------------------------------------------------------------------

def test_small_images_are_not_enlarged_past_twice_their_size_nor_below_the_smallest():
    assert bd.CROP.preferred((28, 28)) == 64 and bd.CROP.ladder((28, 28)) == (64,)
    assert bd.CROP.preferred((50, 60)) == 128 and bd.CROP.preferred(None) == 224
    assert bd.CROP.settings(64) == {"training_crop_size": 64, "validation_crop_size": 64,
                                    "validation_resize_size": 73}
    # detectors: no enlargement; the long side's limit keeps the defaults' ratio
    assert bd.BOXES.preferred((256, 256)) == 256 and bd.BOXES.settings(256) == {"min_size": 256, "max_size": 569}
    assert bd.BOXES.ladder((1000, 1500))[:2] == (600, 576) and bd.BOXES.ladder((1000, 1500))[-1] == 256
    assert bd.YOLO.preferred((300, 400)) == 416


# --- the AutoMode plan the budget shapes -------------------------------------------------------------------------

def test_the_budget_sets_every_trials_epochs_and_input_size():
    p0 = automode.plan(MC, 3, {}, has_gpu=False)
    assert p0["trials"] == 3 and "budget" not in p0
    b = automode.fit_budget(MC, p0, {}, cost(name="resnet18", sizes=(64,)), train_images=240, valid_images=60,
                            concurrency=2, left_s=600, spent_s=20, limit_given=True, native=(28, 28))
    assert b.sizes == {"resnet18": 64} and b.concurrency == 2
    p = automode.plan(MC, 3, {}, has_gpu=False, budget=b)
    assert p["trials"] == b.trials and p["budget"]["predicted_minutes"] is not None
    size = {"training_crop_size": 64, "validation_crop_size": 64, "validation_resize_size": 73}
    assert p["first_trial"]["config"] == {"model_name": "resnet18", "optimizer": "adamw", "learning_rate": 3e-4,
                                          "number_of_epochs": b.epochs, **size}
    for sub in p["space"]:
        assert sub["number_of_epochs"].values == [b.epochs]
        assert {k: sub[k].values[0] for k in size} == size
    assert p["asha"]["max_epochs"] == b.epochs and p["asha"]["grace_period"] == automode.grace_period(b.epochs, {})


def test_what_training_parameters_fix_stays_out_of_the_budgets_hands():
    fixed = {"number_of_epochs": 4, "training_crop_size": 32, "validation_crop_size": 32,
             "validation_resize_size": 32}
    p0 = automode.plan(MC, 3, fixed, has_gpu=False)
    runs = automode.probe_runs(MC, p0, fixed, (28, 28))
    assert runs == [("resnet18", None, {"model_name": "resnet18", "optimizer": "adamw", "learning_rate": 3e-4})]
    b = automode.fit_budget(MC, p0, fixed, cost(name="resnet18"), train_images=240, valid_images=60,
                            concurrency=1, left_s=600, spent_s=20, limit_given=True, native=(28, 28))
    assert b.epochs == 4 and b.sizes == {"resnet18": None}
    assert any("input size is fixed" in m for m in b.messages)
    p = automode.plan(MC, 3, fixed, has_gpu=False, budget=b)
    assert all("number_of_epochs" not in sub and "training_crop_size" not in sub for sub in p["space"])


def test_the_probe_measures_each_model_at_the_largest_and_smallest_size_it_may_take():
    p0 = automode.plan(MC, 8, {}, has_gpu=False)  # 8 trials: two models
    runs = automode.probe_runs(MC, p0, {}, (300, 400))
    assert [(m, s) for m, s, _ in runs] == [("resnet18", 224), ("resnet18", 64), ("mobilenetv2", 224),
                                           ("mobilenetv2", 64)]
    # ViTs keep the input size they were pretrained at: measured once, at it
    gpu = automode.plan(MC, 3, {}, has_gpu=True)
    assert [(m, s) for m, s, _ in automode.probe_runs(MC, gpu, {}, (28, 28))] == [("vitb16r224", None)]


def test_yolov5_is_a_detection_candidate_under_the_same_weights_check(monkeypatch):
    monkeypatch.setattr(automode, "extra_installed", lambda extra: True)
    asked = []

    def available(name, model_size=None):
        asked.append((name, model_size))
        return None if (name, model_size) in {("yolov5", "small"), ("fasterrcnn_resnet18_fpn", None),
                                              ("fasterrcnn_resnet50_fpn", None)} else "nowhere"

    for has_gpu in (False, True):
        p = automode.plan(hp.DETECTION, 3, {}, has_gpu=has_gpu, available=available)
        # the small model's weights are there: yolov5 leads, at that model_size
        assert p["models"][0]["model_name"] == "yolov5" and p["models"][0]["settings"] == {"model_size": "small"}
        assert p["first_trial"]["config"]["model_size"] == "small"
    assert ("yolov5", "medium") in asked  # on GPUs the default size is tried first
    p = automode.plan(hp.DETECTION, 3, {}, has_gpu=False, available=lambda name, model_size=None: "nowhere"
                      if name == "yolov5" else None)
    why = {c["model_name"]: c["why"] for c in p["considered"]}
    assert "no pretrained weights can be had: nowhere" in why["yolov5"]
    assert p["models"][0]["model_name"] == "fasterrcnn_resnet18_fpn"
    # a model_size the job fixes is the only one tried
    asked.clear()
    automode.plan(hp.DETECTION, 3, {"model_size": "large"}, has_gpu=True, available=available)
    assert ("yolov5", None) in asked and not any(s for n, s in asked if n == "yolov5")


def test_with_max_latency_ms_a_model_too_slow_in_the_cost_probe_is_left_out():
    """Batched inference is never slower an image than batch 1: a model whose validation pass took longer than
    ``max_latency_ms`` an image cannot meet it, so AutoMode leaves it out while another model remains."""
    first, second = [c.model_name for c in automode.portfolio(MC, False)][:2]
    measured = bd.Cost((bd.ModelCost(first, ((None, 0.01, 0.050),), 2.0, 0.2),     # 50 ms an image
                        bd.ModelCost(second, ((None, 0.01, 0.002),), 2.0, 0.2)), start_s=5.0)  # 2 ms
    p0 = automode.plan(MC, 8, {}, has_gpu=False)
    assert [m["model_name"] for m in p0["models"]] == [first, second]
    b = automode.fit_budget(MC, p0, {}, measured, train_images=240, valid_images=60, concurrency=1, left_s=3600,
                            spent_s=20, limit_given=True, native=(28, 28))
    p = automode.plan(MC, 8, {}, has_gpu=False, budget=b, max_latency_ms=10)
    assert [m["model_name"] for m in p["models"]] == [second]
    assert p["first_trial"]["config"]["model_name"] == second
    why = next(x["why"] for x in p["left_out"] if x["model_name"] == first)
    assert "50.00 ms an image" in why and "max_latency_ms 10" in why
    # a limit no model meets leaves the plan as it was: the trials are measured after the sweep and marked
    assert [m["model_name"] for m in automode.plan(MC, 8, {}, has_gpu=False, budget=b,
                                                   max_latency_ms=1)["models"]] == [first, second]
    # without a limit nothing changes
    assert [m["model_name"] for m in automode.plan(MC, 8, {}, has_gpu=False, budget=b)["models"]] == [first, second]
