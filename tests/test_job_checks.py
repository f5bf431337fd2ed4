"""What the job file may not do (hardening): leak a credential, set a key that is then ignored, or pass
validation with settings that fail its trials one by one (SPEC §3, §5.2, §6.3, §6.4, §7.2, §8.1, §8.2, §14)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from scheduler.spec import parse_job
from tests.conftest import from_scratch
from tests.test_spec import BASE, error, job  # the spec tests' job-file helpers

DETECTION = BASE.replace("image_classification", "image_object_detection")


def validate(tmp_path, text: str, capsys) -> str:
    """``visionsweep validate`` of ``text``, whose models start from random initialisation: validate checks the
    pretrained weights as run does (the tests at the end of this file), which these tests are not about."""
    from visionsweep.cli import main

    path = tmp_path / "job.yml"
    path.write_text(from_scratch(text))
    (tmp_path / "data" / "train").mkdir(parents=True, exist_ok=True)  # BASE's training_data.path
    capsys.readouterr()
    assert main(["validate", str(path)]) == 0
    return capsys.readouterr().out


# --- credentials ----------------------------------------------------------------------------------

ACCOUNT_KEY = "S3cr3tAccountK3y=="
SIG = "sv1gNaTuRe%2Bxyz%3D"
SESSION = "FwoGZXIvYXdzSessionT0ken"
CLIENT_SECRET = "cl1ent-s3cret-value"
CONN_KEY = "ConnStr1ngK3yBase64=="
PASSWORD = "hunter2hunter2"
SECRETS = (ACCOUNT_KEY, SIG, SESSION, CLIENT_SECRET, CONN_KEY, PASSWORD)

CREDENTIALS_JOB = f"""\
task: image_classification
target_column_name: label
training_data:
  path: https://acct.blob.core.windows.net/data/train?sv=2022-11-02&sp=rl&sig={SIG}
visionsweep:
  datastores:
    images: https://acct.blob.core.windows.net/images?sv=2022-11-02&sig={SIG}
  tracking:
    uri: https://mlflow-user:{PASSWORD}@mlflow.example.com
  storage_options:
    az:
      account_name: acct
      account_key: {ACCOUNT_KEY}
      credential:
        tenant_id: t-1
        client_secret: {CLIENT_SECRET}
    abfs:
      connection_string: DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={CONN_KEY};\
EndpointSuffix=core.windows.net
    s3:
      client_kwargs: {{region_name: eu-west-1, aws_session_token: {SESSION}}}
"""


def test_validate_prints_no_credential_of_any_kind(tmp_path, capsys):
    out = validate(tmp_path, CREDENTIALS_JOB, capsys)
    for secret in SECRETS:
        assert secret not in out
    # only the secret part of a URL is masked; names and regions stay readable
    assert "sig=***" in out and "sp=rl" in out and "account_name: acct" in out and "region_name: eu-west-1" in out
    assert "mlflow-user:***@mlflow.example.com" in out


def test_resolved_job_masks_nested_keys_and_secrets_inside_urls():
    j = parse_job(CREDENTIALS_JOB, source=Path("job.yml"))
    r = j.resolved()
    dumped = yaml.safe_dump(r)
    assert not [s for s in SECRETS if s in dumped]
    opts = r["visionsweep"]["storage_options"]
    assert opts["az"]["credential"] == "***" and opts["abfs"]["connection_string"] == "***"
    assert opts["s3"]["client_kwargs"] == {"region_name": "eu-west-1", "aws_session_token": "***"}
    assert r["training_data"]["path"].endswith("sp=rl&sig=***")
    # the job itself keeps the real values: it still has to read the data
    assert j.spec.visionsweep.storage_options["az"]["account_key"] == ACCOUNT_KEY


def test_the_stored_job_file_has_no_credential_and_parses_again():
    j = parse_job(CREDENTIALS_JOB, source=Path("job.yml"))
    text = j.redacted_text()
    assert not [s for s in SECRETS if s in text]
    again = parse_job(text, source=Path("job.yml"))  # `account_key: ***` would be a YAML alias error
    assert again.spec.visionsweep.storage_options["az"]["account_key"] == "***"
    assert again.redacted_text() == text  # redacting is idempotent


def test_mlflow_params_of_a_trial_carry_no_credential():
    from scheduler.tracking import trial_params

    j = parse_job(CREDENTIALS_JOB, source=Path("job.yml"))
    config = {"model_name": f"https://acct.blob.core.windows.net/models/beit?sv=1&sig={SIG}", "learning_rate": 0.01}
    params = trial_params(config)
    assert params["learning_rate"] == "0.01" and params["model_name"].endswith("sig=***")
    assert not [s for s in [*SECRETS, *j.secrets()] if s in str(params)]


def test_log_lines_show_credentials_as_stars(tmp_path, capsys, caplog):
    validate(tmp_path, CREDENTIALS_JOB, capsys)  # the CLI installs its redaction on the log handlers
    with caplog.at_level(logging.WARNING):
        logging.getLogger("trainers.data").warning("cannot read %s with key %s",
                                                   f"https://a.blob.core.windows.net/x.png?sig={SIG}", ACCOUNT_KEY)
    assert "sig=***" in caplog.text and not [s for s in SECRETS if s in caplog.text]


# --- log_verbosity ----------------------------------------------------------------------------------

@pytest.fixture
def restore_levels():
    from trainers.logs import OWN_LOGGERS

    names = (*OWN_LOGGERS, "", "azure", "azure.core.pipeline.policies.http_logging_policy")
    before = {n: logging.getLogger(n).level for n in names}
    yield
    for n, level in before.items():
        logging.getLogger(n).setLevel(level)


def test_debug_verbosity_is_visionsweeps_own_on_every_path_that_runs_a_job(restore_levels):
    from scheduler.preflight import check_supported

    root = logging.getLogger().level
    j = job("log_verbosity: debug\ntraining_parameters: {model_name: resnet18}\n")
    check_supported(j)  # run, resume and demo all pass here before any trial
    assert logging.getLogger("scheduler.controller").getEffectiveLevel() == logging.DEBUG
    assert logging.getLogger("trainers").level == logging.DEBUG
    azure = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
    assert azure.getEffectiveLevel() >= logging.WARNING
    assert logging.getLogger().level == root


# --- nothing accepted and then ignored ----------------------------------------------------------

def test_augmentations_are_accepted_with_a_warning_that_they_are_not_applied(tmp_path, capsys):
    # the service accepts the key (a string whose syntax the spec does not give): accepted, and said so
    j = job("training_parameters:\n  augmentations: 'RandomHorizontalFlip'\n")
    assert j.training_parameters["augmentations"] == "RandomHorizontalFlip"
    (w,) = j.warnings()
    assert w.startswith("training_parameters.augmentations: accepted, but the service's custom augmentation "
                        "string is not applied") and "built-in augmentations of §7.1" in w
    j = job("search_space:\n  - augmentations: {type: choice, values: [a, b]}\nsweep: {sampling_algorithm: grid}\n")
    assert j.warnings()[0].startswith("search_space[0].augmentations: accepted, but")
    out = validate(tmp_path, BASE + "training_parameters:\n  augmentations: 'RandomHorizontalFlip'\n", capsys)
    assert "# warning: training_parameters.augmentations: accepted, but" in out


def test_augmentation_flags_outside_their_task_or_model_are_refused():
    msg = error("training_parameters:\n  advanced_settings: '{\"apply_automl_train_augmentations\": false}'\n")
    assert "training_parameters.advanced_settings" in msg and "not to image_classification" in msg
    # the spec's own combined example sets both flags for a detection job: the mosaic flag without yolov5 is
    # accepted, with a note that it has no effect
    j = job("training_parameters:\n  model_name: fasterrcnn_resnet50_fpn\n  advanced_settings: "
            "'{\"apply_automl_train_augmentations\": false, \"apply_mosaic_for_yolo\": false}'\n", DETECTION)
    (note,) = [n for n in j.notes() if "apply_mosaic_for_yolo" in n]
    assert "applies to yolov5 only" in note and "trains fasterrcnn_resnet50_fpn, so it has no effect" in note
    assert j.advanced.apply_automl_train_augmentations is False
    # where they act they are accepted: yolov5 is the detection default, and a sweep may pick it
    assert job("training_parameters:\n  advanced_settings: '{\"apply_mosaic_for_yolo\": false}'\n",
               DETECTION).advanced.apply_mosaic_for_yolo is False
    j = job("training_parameters:\n  advanced_settings: '{\"apply_mosaic_for_yolo\": false, "
            "\"apply_automl_train_augmentations\": false}'\n"
            "search_space:\n  - model_name: {type: choice, values: [yolov5, fasterrcnn_resnet18_fpn]}\n"
            "sweep: {sampling_algorithm: grid}\n", DETECTION)
    assert j.advanced.apply_automl_train_augmentations is False
    assert job("training_parameters:\n  advanced_settings: '{\"stream_image_files\": true}'\n"
               ).advanced.stream_image_files


@pytest.mark.parametrize("task,model", [("image_object_detection", "fasterrcnn_resnet18_fpn"),
                                        ("image_instance_segmentation", "maskrcnn_resnet18_fpn")])
def test_box_tasks_report_the_detectors_loss_on_the_validation_images(task, model, shapes_detection,
                                                                      shapes_segmentation):
    """log_validation_loss (true by default, as in the service) for detectors: their own training loss over the
    validation images, computed without changing the model (BatchNorm statistics stay as they were)."""
    from trainers import hyperparameters as hp
    from trainers.data import prepare_data
    from trainers.engine import train

    tr, va = shapes_detection if task == hp.DETECTION else shapes_segmentation
    data = prepare_data(task, "label", str(tr), str(va), 0.2, 0)
    data.train, data.valid = data.train[:4], data.valid[:2]
    fast = {"model_name": model, "min_size": 64, "max_size": 64, "number_of_epochs": 1, "early_stopping": False,
            "training_batch_size": 2, "validation_batch_size": 2, "learning_rate_scheduler": "none"}
    assert job(f"training_parameters:\n  model_name: {model}\n  log_validation_loss: true\n",
               BASE.replace("image_classification", task)).training_parameters["log_validation_loss"]
    out = []
    train(hp.resolve_hyperparameters(task, fast, {}), data, lambda m, save: out.append((m, save)), device="cpu")
    m, _ = out[-1]
    assert m["validation_loss"] > 0 and np.isfinite(m["validation_loss"]) and "mean_average_precision" in m
    out.clear()
    train(hp.resolve_hyperparameters(task, {**fast, "log_validation_loss": False}, {}), data,
          lambda m, save: out.append(m), device="cpu")
    assert "validation_loss" not in out[-1]


def test_the_validation_loss_leaves_the_detector_as_it_was(shapes_detection):
    import torch

    from trainers import hyperparameters as hp
    from trainers.data import prepare_data
    from trainers.models.detectors import build_detector
    from trainers.tasks import make_task
    from trainers.workers import SINGLE, Runtime

    tr, va = shapes_detection
    data = prepare_data(hp.DETECTION, "label", str(tr), str(va), 0.2, 0)
    h = hp.resolve_hyperparameters(hp.DETECTION, {"model_name": "fasterrcnn_resnet18_fpn", "min_size": 64,
                                                  "max_size": 64}, {})
    task = make_task(hp.DETECTION, data.classes)
    model = build_detector("fasterrcnn_resnet18_fpn", len(data.classes), h)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = torch.utils.data.DataLoader(task.valid_dataset(h, data), batch_size=2, collate_fn=task.collate)
    loss = task.validation_loss(model, loader, Runtime.of(torch.device("cpu"), SINGLE, False))
    assert loss > 0 and not model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # BatchNorm statistics too


def test_log_validation_loss_and_log_training_metrics_decide_what_each_evaluation_reports(small_mltable):
    from scheduler.tracking import is_metric
    from trainers import hyperparameters as hp
    from trainers.data import prepare_data
    from trainers.engine import train

    data = prepare_data(hp.MULTICLASS, "label", str(small_mltable), None, 0.2, 0)
    fast = {"model_name": "resnet18", "training_crop_size": 32, "validation_resize_size": 32,
            "validation_crop_size": 32, "training_batch_size": 16, "validation_batch_size": 32,
            "number_of_epochs": 1, "early_stopping": False}

    def reported(**params):
        h = hp.resolve_hyperparameters(data.task, {**fast, **params}, {})
        out = []
        train(h, data, lambda m, save: out.append(m), device="cpu")
        return out[-1]

    default = reported()
    assert "validation_loss" in default and not [k for k in default if k.startswith("train_") and
                                                 k not in ("train_loss", "train_images_per_sec")]
    m = reported(log_validation_loss=False, log_training_metrics=True)
    assert "validation_loss" not in m and "accuracy" in m
    assert 0.0 <= m["train_accuracy"] <= 1.0 and "train_f1_score_macro" in m and "train_validation_loss" not in m
    assert is_metric("train_accuracy", "accuracy") and not is_metric("training_iteration", "accuracy")


def test_compute_is_kept_and_validate_says_the_ray_cluster_runs_the_trials(tmp_path, capsys):
    text = BASE + "compute: azureml:gpu-cluster\n"
    assert job("compute: azureml:gpu-cluster\n").resolved()["compute"] == "azureml:gpu-cluster"
    out = validate(tmp_path, text, capsys)
    assert "# note: compute: 'azureml:gpu-cluster' names the managed service's compute target; " \
           "visionsweep runs the trials on the Ray cluster instead" in out
    assert yaml.safe_load(out)["compute"] == "azureml:gpu-cluster"  # still one YAML document


@pytest.mark.parametrize("size", ["xlarge", "extra_large"])
def test_yolov5_model_size_xlarge_and_extra_large_are_accepted_as_the_v2_value(size):
    j = job(f"training_parameters:\n  model_name: yolov5\n  model_size: {size}\n", DETECTION)
    assert j.training_parameters["model_size"] == "extra_large"
    j = job(f"search_space:\n  - model_size: {{type: choice, values: [small, {size}]}}\n"
            "sweep: {sampling_algorithm: grid}\n", DETECTION)
    assert j.search_space[0]["model_size"].values == ["small", "extra_large"]
    assert "expected one of small, medium, large, extra_large (or xlarge)" in error(
        "training_parameters:\n  model_size: huge\n", DETECTION)


# --- what would fail trial by trial fails the job -------------------------------------------------------

def test_vit_crops_must_be_equal_in_every_combination():
    msg = error("training_parameters:\n  model_name: vits16r224\n  training_crop_size: 256\n")
    assert msg.startswith("job.yml:7: training_parameters.training_crop_size: vits16r224 needs "
                          "training_crop_size == validation_crop_size") and "256 and 224" in msg
    # the task default model is a ViT
    assert "vitb16r224 needs" in error("training_parameters:\n  validation_crop_size: 192\n"
                                       "  validation_resize_size: 256\n")
    space = ("search_space:\n  - model_name: {type: choice, values: [resnet18]}\n"
             "  - model_name: {type: choice, values: [vitb16r224]}\n    training_crop_size: %s\n"
             "sweep: {sampling_algorithm: random}\n")
    msg = error(space % "{type: choice, values: [224, 256]}")
    assert "search_space[1].training_crop_size: vitb16r224 needs" in msg
    msg = error(space % "{type: quniform, min_value: 192, max_value: 256, q: 32}")
    assert "search_space[1].training_crop_size: vitb16r224 needs" in msg and "drawn from a distribution" in msg
    # equal everywhere, or a model that takes any crop: fine
    assert job(space % "{type: choice, values: [224]}")
    assert job("training_parameters:\n  model_name: resnet18\n  training_crop_size: 256\n")
    assert job("training_parameters: {model_name: vitb16r224, training_crop_size: 256, validation_crop_size: 256, "
               "validation_resize_size: 288}\n")


def test_validation_resize_must_hold_the_validation_crop():
    msg = error("training_parameters: {model_name: resnet18, validation_crop_size: 300}\n")
    assert ("training_parameters.validation_crop_size: validation_resize_size (256) "
            "must be >= validation_crop_size (300)") in msg


def test_layers_to_freeze_beyond_the_models_groups_fails_the_job():
    space = ("search_space:\n  - model_name: {type: choice, values: [vitb16r224]}\n"
             "  - model_name: {type: choice, values: [resnet18, mobilenetv2]}\n    layers_to_freeze: %s\n"
             "sweep: {sampling_algorithm: random}\n")
    msg = error(space % "{type: quniform, min_value: 0, max_value: 8, q: 1}")
    assert msg.startswith("job.yml:8: search_space[1].layers_to_freeze: layers_to_freeze: resnet18 has 5 layer groups")
    assert "search_space[1].layers_to_freeze" in error(space % "{type: randint, upper: 7}")
    assert job(space % "{type: randint, upper: 6}")
    # AutoMode picks its own models: each of them must have the groups
    msg = error("limits: {max_trials: 8}\ntraining_parameters: {layers_to_freeze: 6}\n")
    assert "training_parameters.layers_to_freeze" in msg and "AutoMode" in msg and "resnet18" in msg


@pytest.mark.parametrize("dist,expected", [
    ("learning_rate: {type: uniform, min_value: 0.1, max_value: 0.01}", "min_value must be < max_value"),
    ("learning_rate: {type: quniform, min_value: 0.001, max_value: 0.01, q: 0}", "q: Input should be greater than 0"),
    ("learning_rate: {type: loguniform, min_value: 0.0001, max_value: 0.01}",
     "the smallest value this loguniform produces, exp(min_value) = 1.0001, is not valid: expected a value <= 1"),
    ("training_batch_size: {type: quniform, min_value: 1, max_value: 64, q: 4}",
     "the smallest value this quniform produces, round(min_value / q) * q = 0, is not valid: expected a value > 0"),
    ("number_of_epochs: {type: randint, upper: 10}", "the smallest value this randint produces, 0, is not valid"),
    ("training_batch_size: {type: uniform, min_value: 8, max_value: 64}", "training_batch_size takes integers"),
    ("training_batch_size: {type: qloguniform, min_value: 2, max_value: 4, q: 0.5}", "takes integers"),
    ("optimizer: {type: uniform, min_value: 0, max_value: 1}", "optimizer takes a string: sweep it with type: choice"),
])
def test_distribution_bounds_are_checked_at_job_time(dist, expected):
    msg = error(f"search_space:\n  - {dist}\nsweep: {{sampling_algorithm: random}}\n")
    assert f"search_space[0].{dist.split(':')[0]}" in msg and expected in msg, msg
    if "exp(min_value)" in expected:
        assert "bounds are natural-log exponents, §8.1" in msg


def test_quniform_draws_the_same_multiples_of_q_under_random_and_bayesian_sampling():
    from scheduler.bayesian import make_searcher
    from scheduler.space import sample_config

    for lo, hi, q in [(16, 64, 16), (1, 10, 4), (0.001, 0.01, 0.002), (10, 100, 7)]:
        j = job(f"""\
            limits: {{max_trials: 50}}
            search_space:
              - training_batch_size: {{type: quniform, min_value: {lo}, max_value: {hi}, q: {q}}}
                learning_rate: {{type: quniform, min_value: {lo / 10000}, max_value: {hi / 10000}, q: {q / 10000}}}
            sweep: {{sampling_algorithm: bayesian}}
            """) if float(q).is_integer() and lo >= 2 else None
        space = j.search_space if j else [{"x": _quniform(lo, hi, q)}]
        rng = np.random.default_rng(0)
        random = [sample_config(space, rng) for _ in range(4000)]
        searcher = make_searcher(space, "accuracy", seed=0, max_trials=50)  # used to raise "not divisible by q"
        bayes = []
        for i in range(60):
            cfg = searcher.suggest(f"t{i}")
            bayes.append(cfg)
            searcher.on_trial_complete(f"t{i}", {"accuracy": float(rng.random())})
        for name, d in space[0].items():
            k_lo, k_hi = d.indices()
            grid = {d.value(k) for k in range(k_lo, k_hi + 1)}
            r, b = {c[name] for c in random}, {c[name] for c in bayes}
            assert r == grid, (name, lo, hi, q, sorted(r))  # 4000 draws see every value
            assert b <= grid and len(b) > 1, (name, lo, hi, q, sorted(b))
            study = searcher._space[name]  # what Optuna searches: the index k of every value of the grid
            assert {d.value(k) for k in range(study.low, study.high + 1)} == grid
            assert {type(v) for v in r} == {type(v) for v in b}  # ints for whole-number q under both
            if float(lo / d.q).is_integer() and float(hi / d.q).is_integer():  # bounds on the grid: values inside
                assert all(d.min_value <= v <= d.max_value for v in grid)


def _quniform(lo, hi, q):
    from scheduler.space import QUniform

    return QUniform(type="quniform", min_value=lo, max_value=hi, q=q)


# --- warnings and extensions -------------------------------------------------------------------

TRUNCATION = """\
limits: {{max_trials: 10, max_concurrent_trials: {c}}}
search_space:
  - learning_rate: {{type: uniform, min_value: 0.001, max_value: 0.01}}
sweep:
  sampling_algorithm: random
  early_termination: {{type: truncation_selection, truncation_percentage: 20, exclude_finished_jobs: true}}
"""


def test_truncation_that_can_never_stop_a_trial_is_a_warning_in_validate_and_at_run_start(tmp_path, capsys,
                                                                                           monkeypatch):
    from scheduler import controller
    from trainers.errors import VisionsweepError
    from visionsweep.cli import main

    assert job(TRUNCATION.format(c=5)).warnings() == []  # floor(5 x 20%) = 1 trial can be cancelled
    (w,) = job(TRUNCATION.format(c=1)).warnings()
    assert "exclude_finished_jobs: true" in w and "can never stop a trial" in w and "max_concurrent_trials to 5" in w
    out = validate(tmp_path, BASE + TRUNCATION.format(c=1), capsys)
    assert "# warning: sweep.early_termination: truncation_selection" in out

    def no_run(*a, **k):
        raise VisionsweepError("stopped by the test")
    monkeypatch.setattr(controller, "run_job", no_run)
    assert main(["run", str(tmp_path / "job.yml")]) == 2
    err = capsys.readouterr().err
    assert "warning: sweep.early_termination: truncation_selection" in err and "stopped by the test" in err


def test_asha_is_accepted_and_marked_as_a_visionsweep_extension(tmp_path, capsys):
    import scheduler.spec

    text = BASE + ("search_space:\n  - learning_rate: {type: uniform, min_value: 0.001, max_value: 0.01}\n"
                   "sweep:\n  sampling_algorithm: random\n  early_termination: {type: asha, grace_period: 2}\n")
    out = validate(tmp_path, text, capsys)
    assert "# note: sweep.early_termination.type: asha is a visionsweep extension" in out
    assert yaml.safe_load(out)["sweep"]["early_termination"]["type"] == "asha"
    doc = " ".join(scheduler.spec.__doc__.split())
    assert "Our own additions live under one top-level key, ``visionsweep:``" in doc and "type: asha" in doc


def test_a_vit_crop_from_an_unbounded_distribution_is_refused_too():
    msg = error("search_space:\n  - model_name: {type: choice, values: [vits16r224]}\n"
                "    validation_crop_size: {type: qnormal, mu: 224, sigma: 16, q: 16}\n"
                "sweep: {sampling_algorithm: random}\n")
    assert "search_space[0].validation_crop_size: vits16r224 needs training_crop_size == validation_crop_size" in msg


def test_a_trial_process_logs_visionsweeps_records_at_the_jobs_verbosity(restore_levels):
    """In a Ray worker the root logger has no handler: without one, records below WARNING are dropped."""
    import subprocess
    import sys

    code = ("import logging\nfrom trainers.logs import apply_in_worker\napply_in_worker('debug')\n"
            "logging.getLogger('trainers.engine').debug('epoch details')\n"
            "logging.getLogger('azure.core.pipeline').info('Request URL: https://x')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "DEBUG trainers.engine: epoch details" in out.stderr
    assert "Request URL" not in out.stderr  # other libraries stay at WARNING


def test_yolov5_settings_do_not_apply_to_mmdetection_models():
    msg = error("training_parameters:\n  model_name: atss_r50_fpn_1x_coco\n  image_size: 512\n", DETECTION)
    assert ("training_parameters.image_size: hyperparameter 'image_size' "
            "does not apply to model atss_r50_fpn_1x_coco") in msg
    msg = error("search_space:\n  - model_name: {type: choice, values: [atss_r50_fpn_1x_coco]}\n"
                "    multi_scale: {type: choice, values: [true, false]}\nsweep: {sampling_algorithm: grid}\n",
                DETECTION)
    assert ("search_space[0].multi_scale: hyperparameter 'multi_scale' "
            "does not apply to model atss_r50_fpn_1x_coco") in msg
    # their own settings apply (min_size / max_size, as the torchvision detectors)
    assert job("training_parameters:\n  model_name: atss_r50_fpn_1x_coco\n  min_size: 512\n", DETECTION)


@pytest.mark.parametrize("key,value", [("split_ratio", "[0.1, 0.2]"), ("distributed", "[true, false]")])
def test_job_level_settings_cannot_be_swept(key, value):
    msg = error(f"search_space:\n  - {key}: {{type: choice, values: {value}}}\nsweep: {{sampling_algorithm: grid}}\n")
    assert f"search_space[0].{key}: {key!r} cannot be swept" in msg and "set it in training_parameters" in msg


def test_validate_and_run_refuse_a_data_path_that_does_not_exist_naming_its_line(tmp_path, capsys):
    from scheduler.controller import run_job
    from scheduler.spec import load_job
    from visionsweep.cli import main

    path = tmp_path / "job.yml"
    path.write_text(BASE + "validation_data:\n  path: data/valid.jsonl\n")
    (tmp_path / "data" / "train").mkdir(parents=True)
    capsys.readouterr()
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:6: validation_data.path: data/valid.jsonl does not exist" in err
    assert "expected an MLTable folder, an MLTable file or a JSONL file" in err
    with pytest.raises(Exception, match="validation_data.path: data/valid.jsonl does not exist"):
        run_job(load_job(path), tmp_path / "run")  # before any run folder, Ray or data preparation
    assert not (tmp_path / "run").exists()


# --- validate refuses what run refuses before any trial ------------------------------------------------------

@pytest.fixture
def no_weights_here(tmp_path, monkeypatch):
    """Nothing holds pretrained weights: empty torch hub and Hugging Face caches, no weights store from the
    environment, the hub offline (the jobs below also say download_weights: false: no test reaches the internet)."""
    for var, sub in (("TORCH_HOME", "torch"), ("HF_HOME", "hf"), ("HF_HUB_CACHE", "hf/hub")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    (tmp_path / "hf" / "hub").mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("VISIONSWEEP_WEIGHTS_STORE", raising=False)
    (tmp_path / "store").mkdir()
    (tmp_path / "data" / "train").mkdir(parents=True)  # BASE's training_data.path
    return tmp_path


def _refused(path, capsys) -> str:
    from visionsweep.cli import main

    capsys.readouterr()
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


OFFLINE = "visionsweep: {{weights_store: {store}, download_weights: false, cache: {{dir: {cache}}}}}\n"


def test_validate_refuses_a_model_whose_weights_are_nowhere_with_runs_message_at_its_line(no_weights_here, capsys):
    from scheduler.controller import run_job
    from scheduler.spec import load_job
    from trainers.models.weights.sources import WeightsError

    d = no_weights_here
    path = d / "job.yml"
    path.write_text(BASE + "training_parameters:\n  model_name: resnet18\n"
                    + OFFLINE.format(store=d / "store", cache=d / "cache"))
    err = _refused(path, capsys)
    assert err.startswith(f"error: {path}:6: training_parameters.model_name: no pretrained weights for resnet18")
    assert f"the weights store {d / 'store' / 'resnet18-f37072fd.pth'}: not there" in err
    assert f"the torch hub cache ({d / 'torch' / 'hub' / 'checkpoints' / 'resnet18-f37072fd.pth'}): not there" in err
    # run refuses it before any trial with the very same message
    with pytest.raises(WeightsError) as e:
        run_job(load_job(path), d / "run", echo=lambda s: None)
    assert f"error: {e.value}\n" in err
    assert not (d / "run" / "trials").exists() and not (d / "run" / "data").exists()
    # visionsweep.pretrained: false needs no weights
    path.write_text(from_scratch(path.read_text()))
    from visionsweep.cli import main

    assert main(["validate", str(path)]) == 0
    assert "# weights: none: every model starts from random initialisation" in capsys.readouterr().out


def test_validate_refuses_a_misspelt_hugging_face_id_at_its_line_with_the_near_name(no_weights_here, capsys):
    d = no_weights_here
    offline = OFFLINE.format(store=d / "store", cache=d / "cache")
    path = d / "job.yml"
    path.write_text(BASE + "training_parameters:\n  model_name: google/vit-base-patch16-22\n" + offline)
    err = _refused(path, capsys)
    assert err.startswith(f"error: {path}:6: training_parameters.model_name: no pretrained weights for "
                          "google/vit-base-patch16-22")
    assert "google/vit-base-patch16-22: did you mean google/vit-base-patch16-224?" in err  # a curated model
    # a model in the Hugging Face cache, swept: the line of the value in the choice
    (d / "hf" / "hub" / "models--acme--tiny-vit-classifier").mkdir()
    path.write_text(BASE + "search_space:\n  - model_name:\n      type: choice\n      values:\n"
                    "        - google/vit-base-patch16-224\n        - acme/tiny-vit-clasifier\n"
                    "sweep: {sampling_algorithm: grid}\n" + offline)
    err = _refused(path, capsys)
    assert err.startswith(f"error: {path}:9: search_space[0].model_name.values[0]: no pretrained weights for "
                          "google/vit-base-patch16-224, acme/tiny-vit-clasifier")  # neither has weights here
    assert f"the job names them at: {path}:9: search_space[0].model_name.values[0]; " \
           f"{path}:10: search_space[0].model_name.values[1]" in err
    assert "acme/tiny-vit-clasifier: did you mean acme/tiny-vit-classifier?" in err
    assert "google/vit-base-patch16-224: did you mean" not in err  # a right name gets no hint


@pytest.mark.parametrize("extra,expected", [
    ("primary_metric: acuracy\n", ":5: primary_metric: task image_classification is optimised for 'accuracy' only, "
                                  "but got 'acuracy'; did you mean 'accuracy'?"),
    ("limits: {max_trails: 3}\n", ":5: limits.max_trails: unknown key 'max_trails' in limits; "
                                  "did you mean 'max_trials'?"),
    ("trainig_parameters: {}\n", ":5: trainig_parameters: unknown key 'trainig_parameters'; "
                                 "did you mean 'training_parameters'?"),
    ("visionsweep: {weight_store: w}\n", "did you mean 'weights_store'?"),
    ("sweep: {sampling_algorithm: grid, early_termination: {type: bandit, slack_factr: 0.1}}\n",
     "unknown key 'slack_factr' in sweep.early_termination; did you mean 'slack_factor'?"),
    ("training_parameters:\n  lerning_rate: 0.1\n", ":6: training_parameters.lerning_rate: unknown hyperparameter "
                                                   "'lerning_rate'; did you mean 'learning_rate'?"),
    ("training_parameters:\n  model_name: resnet181\n", "unknown model_name 'resnet181' for task "
                                                      "image_classification; did you mean 'resnet18'?"),
    ("training_parameters:\n  model_name: google-vit-base-patch16-22\n",
     "did you mean 'google-vit-base-patch16-224'?"),
    ("training_parameters:\n  optimizer: adamm\n", "but got 'adamm'; did you mean 'adam'?"),
    ("training_parameters:\n  advanced_settings: '{\"stream_image_file\": true}'\n",
     "unknown setting 'stream_image_file'; did you mean 'stream_image_files'?"),
])
def test_validate_offers_the_near_name_for_a_misspelt_one(tmp_path, capsys, extra, expected):
    (tmp_path / "data" / "train").mkdir(parents=True)
    path = tmp_path / "job.yml"
    path.write_text(BASE + extra)
    err = _refused(path, capsys)
    assert err.startswith(f"error: {path}" if expected.startswith(":") else "error: ")
    assert expected in err


def test_validate_prints_only_the_advanced_settings_that_act_on_the_job(tmp_path, capsys):
    out = yaml.safe_load(validate(tmp_path, BASE, capsys))
    assert out["training_parameters"]["advanced_settings"] == {"stream_image_files": False}  # no yolo/box switches
    tp = job("training_parameters:\n  model_name: fasterrcnn_resnet50_fpn\n", DETECTION).resolved()
    assert tp["training_parameters"]["advanced_settings"] == {"apply_automl_train_augmentations": True,
                                                              "stream_image_files": False}
    yolo = job("", DETECTION).resolved()["training_parameters"]["advanced_settings"]  # yolov5, the default
    assert yolo == {"apply_mosaic_for_yolo": True, "apply_automl_train_augmentations": True,
                    "stream_image_files": False}


def test_validate_of_automode_leaves_out_the_candidates_without_weights_as_run_does(no_weights_here, capsys,
                                                                                    mobilenet_weights):
    from visionsweep.cli import main

    d = no_weights_here
    path = d / "job.yml"
    path.write_text(BASE + "limits: {max_trials: 8}\n" + OFFLINE.format(store=d / "store", cache=d / "cache"))
    err = _refused(path, capsys)  # no candidate has weights: run would refuse it too
    assert err.startswith(f"error: {path}:5: limits.max_trials: AutoMode found no candidate model it can train here")
    shutil.copyfile(mobilenet_weights, d / "store" / mobilenet_weights.name)
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "# weights: AutoMode picks from mobilenetv2, whose pretrained weights can be had here" in out
    assert "# weights: AutoMode leaves out " in out and "resnet50" in out
    assert yaml.safe_load(out)["mode"] == "automode"
