"""The job YAML (SPEC §3, §4.1, §8.2, §14): what is accepted, what it resolves to, and what each error says."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from scheduler.space import Choice, LogUniform, QUniform
from scheduler.spec import load_job, parse_job
from trainers.errors import SpecError

FIXTURES = Path(__file__).parent / "fixtures" / "jobs"

BASE = """\
task: image_classification
target_column_name: label
training_data:
  path: data/train
"""


def job(extra: str = "", base: str = BASE):
    return parse_job(base + textwrap.dedent(extra), source=Path("job.yml"))


def error(extra: str = "", base: str = BASE) -> str:
    with pytest.raises(SpecError) as e:
        job(extra, base)
    return str(e.value)


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.yml")), ids=lambda p: p.stem)
def test_every_fixture_job_validates(path):
    j = load_job(path)
    # The resolved job always names the task's primary metric and the mode.
    r = j.resolved()
    assert r["primary_metric"] in ("accuracy", "iou", "mean_average_precision")
    assert r["mode"] in ("single", "manual", "automode")


def test_v2_full_file_keeps_top_level_keys_and_resolves_conditional_space():
    j = load_job(FIXTURES / "v2_full_classification.yml")
    assert j.spec.schema_.endswith("autoMLJob.schema.json")
    assert j.spec.experiment_name == "automl-image-classification"
    assert j.mode == "manual"
    assert j.training_parameters["ams_gradient"] is False
    assert j.training_parameters["learning_rate_scheduler"] == "step"
    assert j.advanced.stream_image_files is True
    assert isinstance(j.search_space[1]["learning_rate"], LogUniform)
    assert isinstance(j.search_space[1]["training_batch_size"], QUniform)
    # paths are relative to the job file's folder
    assert j.base_dir == FIXTURES.resolve()


def test_v1_spellings_are_rewritten_to_v2_names_and_01_booleans_accepted():
    j = load_job(FIXTURES / "v1_names_multilabel.yml")
    tp = j.training_parameters
    assert tp["learning_rate_scheduler"] == "warmup_cosine"
    assert tp["ams_gradient"] is True and tp["early_stopping"] is False
    assert tp["gradient_accumulation_step"] == 2
    assert (tp["training_crop_size"], tp["validation_resize_size"], tp["validation_crop_size"]) == (64, 72, 64)
    assert "lr_scheduler" not in j.resolved()["training_parameters"]
    # max_concurrent_trials is clamped to max_trials and the stored value rewritten (§3.2)
    assert j.spec.limits.max_concurrent_trials == 4
    assert j.validation_fraction == 0.25


def test_spec_example_parses_with_policy_and_string_node_count():
    j = load_job(FIXTURES / "spec_example_detection.yml")
    assert j.spec.sweep.early_termination.type == "bandit"
    assert j.spec.sweep.early_termination.slack_factor == 0.2
    assert j.spec.properties.node_count_per_trial == 2


def test_automode_and_single_modes():
    assert load_job(FIXTURES / "automode_segmentation.yml").mode == "automode"
    assert load_job(FIXTURES / "automode_segmentation.yml").training_parameters["tile_grid_size"] == "3x2"
    assert job().mode == "single"
    assert job("limits: {max_trials: 1}\n").mode == "single"


def test_limits_defaults_follow_the_how_to():
    limits = job().spec.limits
    assert (limits.max_trials, limits.max_concurrent_trials, limits.timeout_minutes) == (1, 1, 10080)


def test_task_default_model_and_split_fraction():
    j = job()
    assert j.validation_fraction == 0.2
    assert job("training_parameters: {split_ratio: 0.3}\n").validation_fraction == 0.3


# --- errors: each names the file, line and YAML path, and says what was expected -------------

def test_max_trials_out_of_range_names_line_and_field():
    msg = error("limits:\n  max_trials: 0\n")
    assert msg.startswith("job.yml:6: limits.max_trials:") and "greater than or equal to 1" in msg


def test_unknown_top_level_key():
    msg = error("trainig_parameters: {}\n")
    assert "job.yml:5" in msg and "unknown key 'trainig_parameters'" in msg


def test_missing_required_key():
    msg = error(base="task: image_classification\ntraining_data: {path: x}\n")
    assert "target_column_name: required key is missing" in msg


def test_unknown_task():
    assert "task" in error(base=BASE.replace("image_classification", "image_regression"))


def test_primary_metric_must_be_the_tasks():
    msg = error("primary_metric: auc\n")
    assert "primary_metric" in msg and "'accuracy'" in msg and "'auc'" in msg


@pytest.mark.parametrize("params,expected", [
    ("foo: 1", "training_parameters.foo: unknown hyperparameter 'foo'"),
    ("min_size: 600", "does not apply to task image_classification"),
    ("learning_rate: 2", "training_parameters.learning_rate: expected a value <= 1, but got 2"),
    ("early_stopping: maybe", "expected a boolean"),
    ("optimizer: rmsprop", "expected one of sgd, adam, adamw"),
    ("model_name: resnet19", "unknown model_name 'resnet19'"),
    ("lr_scheduler: step\n  learning_rate_scheduler: step",
     "'lr_scheduler' and 'learning_rate_scheduler' are two spellings"),
    ("number_of_epochs: 0", "expected a value > 0"),
    ("weighted_loss: 3", "expected one of 0, 1, 2"),
])
def test_bad_training_parameters(params, expected):
    msg = error(f"training_parameters:\n  {params}\n")
    assert expected in msg and msg.startswith(("job.yml:6", "job.yml:7"))


def test_yolo_only_parameter_rejected_for_other_detector():
    base = BASE.replace("image_classification", "image_object_detection")
    msg = error("training_parameters:\n  model_name: fasterrcnn_resnet50_fpn\n  model_size: small\n", base)
    assert "model_size" in msg and "does not apply to model fasterrcnn_resnet50_fpn" in msg


def test_search_space_needs_sweep_and_sweep_needs_search_space():
    space = "search_space:\n  - learning_rate: {type: uniform, min_value: 0.001, max_value: 0.01}\n"
    assert "needs sweep.sampling_algorithm" in error(space)
    assert "sweep is given without a search_space" in error("sweep: {sampling_algorithm: random}\n")


def test_grid_takes_only_choice():
    msg = error("search_space:\n  - learning_rate: {type: uniform, min_value: 0.001, max_value: 0.01}\n"
                "sweep: {sampling_algorithm: grid}\n")
    assert "search_space[0].learning_rate" in msg and "grid sampling takes only type: choice" in msg


def test_bayesian_rules():
    two = ("search_space:\n  - learning_rate: {type: uniform, min_value: 0.001, max_value: 0.01}\n"
           "  - learning_rate: {type: uniform, min_value: 0.01, max_value: 0.1}\n")
    assert "takes one sub-space" in error(two + "sweep: {sampling_algorithm: bayesian}\n")
    logu = "search_space:\n  - learning_rate: {type: loguniform, min_value: -6, max_value: -2}\n"
    assert "takes only choice, uniform and quniform" in error(logu + "sweep: {sampling_algorithm: bayesian}\n")
    one = "search_space:\n  - learning_rate: {type: uniform, min_value: 0.001, max_value: 0.01}\n"
    msg = error(one + "sweep:\n  sampling_algorithm: bayesian\n  early_termination: {type: median_stopping}\n")
    assert "sweep.early_termination" in msg and "cannot be combined" in msg


@pytest.mark.parametrize("policy,expected", [
    ("{type: bandit, slack_factor: 0.1, slack_amount: 0.2}", "exactly one of slack_factor or slack_amount"),
    ("{type: bandit}", "exactly one of slack_factor or slack_amount"),
    ("{type: truncation_selection, truncation_percentage: 100}", "truncation_percentage"),
    ("{type: median_stopping, evaluation_interval: 0}", "evaluation_interval"),
    ("{type: hyperband}", "unknown type 'hyperband'"),
    ("{type: median_stopping, slack_factor: 0.1}", "unknown key 'slack_factor'"),
])
def test_bad_early_termination(policy, expected):
    space = "search_space:\n  - learning_rate: {type: uniform, min_value: 0.001, max_value: 0.01}\n"
    msg = error(space + f"sweep:\n  sampling_algorithm: random\n  early_termination: {policy}\n")
    assert expected in msg


def test_bad_distributions():
    msg = error("search_space:\n  - learning_rate: {type: gaussian, mu: 0, sigma: 1}\n"
                "sweep: {sampling_algorithm: random}\n")
    assert "search_space[0].learning_rate" in msg and "unknown type 'gaussian'" in msg
    msg = error("search_space:\n  - learning_rate: {type: uniform, min_value: 0.1, max_value: 0.01}\n"
                "sweep: {sampling_algorithm: random}\n")
    assert "min_value must be < max_value" in msg
    msg = error("search_space:\n  - optimizer: {type: choice, values: [sgd, lion]}\n"
                "sweep: {sampling_algorithm: random}\n")
    assert "search_space[0].optimizer" in msg and "lion" in msg


def test_parameter_fixed_and_swept_is_rejected():
    msg = error("training_parameters: {learning_rate: 0.01}\n"
                "search_space:\n  - learning_rate: {type: uniform, min_value: 0.001, max_value: 0.01}\n"
                "sweep: {sampling_algorithm: random}\n")
    assert "both fixed in training_parameters and swept" in msg


def test_model_name_in_space_is_checked_per_task():
    msg = error("search_space:\n  - model_name: {type: choice, values: [resnet18, yolov5]}\n"
                "sweep: {sampling_algorithm: random}\n")
    assert "unknown model_name 'yolov5'" in msg and "search_space[0].model_name" in msg


def test_advanced_settings_errors():
    assert "JSON is invalid" in error("training_parameters:\n  advanced_settings: '{bad json'\n")
    msg = error("training_parameters:\n  advanced_settings: '{\"stream_images\": true}'\n")
    assert "unknown setting 'stream_images'" in msg and "stream_image_files" in msg


def test_yaml_syntax_error_names_line():
    msg = error("limits:\n  max_trials: [1\n")
    assert msg.startswith("job.yml:") and "not valid YAML" in msg


def test_split_given_twice():
    assert "either validation_data_size or split_ratio" in error(
        "validation_data_size: 0.1\ntraining_parameters: {split_ratio: 0.3}\n")


def test_hub_names_are_accepted_by_shape():
    j = job("training_parameters: {model_name: microsoft/beit-base-patch16-224}\n")
    assert j.training_parameters["model_name"] == "microsoft/beit-base-patch16-224"


def test_choice_values_are_coerced_to_the_parameter_type():
    j = job("search_space:\n  - early_stopping: {type: choice, values: [0, 1]}\nsweep: {sampling_algorithm: grid}\n")
    assert isinstance(j.search_space[0]["early_stopping"], Choice)
    assert j.search_space[0]["early_stopping"].values == [False, True]


def test_credentials_in_storage_options_are_never_shown(tmp_path, capsys):
    from visionsweep.cli import main

    job = tmp_path / "job.yml"
    job.write_text("""\
task: image_classification
target_column_name: label
training_data: {path: data}
visionsweep:
  pretrained: false
  storage_options:
    az: {account_name: acct, account_key: S3cr3tK3y==, anon: false}
    s3: {key: AKIAEXAMPLE, secret: wJalrXUtnFEMI, client_kwargs: {region_name: eu-west-1}}
""")
    parsed = load_job(job)
    resolved = yaml.safe_dump(parsed.resolved())
    for secret in ("S3cr3tK3y==", "AKIAEXAMPLE", "wJalrXUtnFEMI"):
        assert secret not in resolved and secret not in parsed.redacted_text()
    assert "account_name: acct" in resolved and "region_name: eu-west-1" in resolved
    capsys.readouterr()
    (job.parent / "data" / "train").mkdir(parents=True)
    assert main(["validate", str(job)]) == 0
    printed = capsys.readouterr().out
    assert "account_key: '***'" in printed and "S3cr3tK3y==" not in printed and "wJalrXUtnFEMI" not in printed
