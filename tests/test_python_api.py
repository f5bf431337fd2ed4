"""The Python API: the service notebook's cells run with their imports changed only, and build the job its CLI
YAML is; every distribution and policy round-trips through ``dump`` and ``load_job``; a wrong argument fails with
the YAML path's message; ``visionsweep.run`` and ``MLClient().jobs`` run a tiny job to a model package."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from scheduler.spec import load_job as load_spec
from trainers.errors import SpecError, VisionsweepError

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "jobs"
SAMPLE = "../../../trainers/sample_data/fashion_mnist"


def notebook_job():
    """The classification notebook's sweep cells, imports changed from ``azure.ai.ml`` to ``visionsweep``."""
    from visionsweep import Input, automl
    from visionsweep.automl import ClassificationPrimaryMetrics, SearchSpace
    from visionsweep.constants import AssetTypes
    from visionsweep.sweep import BanditPolicy, Choice, Uniform

    my_training_data_input = Input(type=AssetTypes.MLTABLE, path=f"{SAMPLE}/train")
    my_validation_data_input = Input(type=AssetTypes.MLTABLE, path=f"{SAMPLE}/valid")

    image_classification_job = automl.image_classification(
        compute="azureml:gpu-cluster",
        experiment_name="dpv2-cli-automl-image-classification-experiment",
        training_data=my_training_data_input,
        validation_data=my_validation_data_input,
        target_column_name="label",
        primary_metric=ClassificationPrimaryMetrics.ACCURACY,
        tags={"my_custom_tag": "My custom value"},
    )
    image_classification_job.set_limits(timeout_minutes=60, max_trials=10, max_concurrent_trials=2)
    image_classification_job.set_training_parameters(early_stopping=True, evaluation_frequency=1)
    image_classification_job.extend_search_space(
        [
            SearchSpace(
                model_name=Choice(["vitb16r224", "vits16r224"]),
                learning_rate=Uniform(0.001, 0.01),
                number_of_epochs=Choice([15, 30]),
            ),
            SearchSpace(
                model_name=Choice(["seresnext", "resnet50"]),
                learning_rate=Uniform(0.001, 0.01),
                layers_to_freeze=Choice([0, 2]),
            ),
        ]
    )
    image_classification_job.set_sweep(
        sampling_algorithm="Random",
        early_termination=BanditPolicy(evaluation_interval=2, slack_factor=0.2, delay_evaluation=6),
    )
    return image_classification_job


def test_the_notebooks_cells_build_the_job_of_its_cli_yaml(monkeypatch):
    monkeypatch.chdir(FIXTURES)  # the notebook's relative data paths, from where it runs
    job = notebook_job()
    yaml_job = load_spec(FIXTURES / "notebook_classification.yml")
    assert job.validated().resolved() == yaml_job.resolved()
    assert job.validated().mode == "manual" and job.task == "image_classification"
    # the job's attributes read as the SDK's do
    assert job.training_data.path == f"{SAMPLE}/train" and job.limits["max_trials"] == 10
    assert job.sweep["early_termination"].slack_factor == 0.2


def test_dump_writes_the_cli_yaml_and_load_gives_the_job_back(tmp_path, monkeypatch):
    import visionsweep

    monkeypatch.chdir(FIXTURES)
    job = notebook_job()
    dest = FIXTURES / f".dumped-{tmp_path.name}.yml"  # beside the fixture: the same relative data paths
    try:
        text = job.dump(dest)
        assert dest.read_text() == text
        assert text.startswith("$schema: https://azuremlschemas.azureedge.net/latest/autoMLJob.schema.json\n")
        back = visionsweep.load_job(dest)
        assert back == job and type(back) is type(job)
        assert load_spec(dest).resolved() == job.validated().resolved()  # `visionsweep run` reads the same job
        # and the fixture itself, loaded, is the notebook's job
        assert visionsweep.load_job(FIXTURES / "notebook_classification.yml") == job
    finally:
        dest.unlink(missing_ok=True)


def _base(tmp_path):
    from visionsweep import Input, automl

    return automl.image_classification(training_data=Input(path=str(Path(FIXTURES, SAMPLE, "train").resolve())),
                                       target_column_name="label", base_dir=tmp_path)


def test_every_distribution_round_trips_through_dump_and_load(tmp_path):
    import visionsweep
    from visionsweep.automl import SearchSpace
    from visionsweep.sweep import (
        Choice,
        LogNormal,
        LogUniform,
        Normal,
        QLogNormal,
        QLogUniform,
        QNormal,
        QUniform,
        Randint,
        Uniform,
    )

    spaces = [SearchSpace(learning_rate=Uniform(0.001, 0.01)), SearchSpace(learning_rate=LogUniform(-6.9, -2.3)),
              SearchSpace(learning_rate=Normal(0.01, 0.001)), SearchSpace(weight_decay=LogNormal(-9.0, 0.5)),
              SearchSpace(training_batch_size=QUniform(16, 64, 16)),
              SearchSpace(training_batch_size=QLogUniform(2.8, 4.2, 8)),
              SearchSpace(number_of_epochs=QNormal(10, 2, 1)), SearchSpace(training_batch_size=QLogNormal(3.5, 0.3, 8)),
              SearchSpace(layers_to_freeze=Randint(3)), SearchSpace(optimizer=Choice(["sgd", "adamw"]))]
    job = _base(tmp_path)
    job.set_limits(max_trials=4)
    job.extend_search_space(spaces)
    job.set_sweep(sampling_algorithm="random")
    job.dump(tmp_path / "job.yml")
    back = visionsweep.load_job(tmp_path / "job.yml")
    assert back.search_space == spaces and back == job
    types = [next(iter(s.distributions.values())).type for s in back.search_space]
    assert types == ["uniform", "loguniform", "normal", "lognormal", "quniform", "qloguniform", "qnormal",
                     "qlognormal", "randint", "choice"]


@pytest.mark.parametrize("policy", ["bandit_factor", "bandit_amount", "median", "truncation", "asha"])
def test_every_policy_round_trips_through_dump_and_load(tmp_path, policy):
    import visionsweep
    from visionsweep.automl import SearchSpace
    from visionsweep.sweep import AshaPolicy, BanditPolicy, Choice, MedianStoppingPolicy, TruncationSelectionPolicy

    made = {"bandit_factor": BanditPolicy(evaluation_interval=2, slack_factor=0.2, delay_evaluation=6),
            "bandit_amount": BanditPolicy(slack_amount=0.05),
            "median": MedianStoppingPolicy(evaluation_interval=1, delay_evaluation=2),
            "truncation": TruncationSelectionPolicy(evaluation_interval=1, truncation_percentage=20,
                                                    exclude_finished_jobs=True),
            "asha": AshaPolicy(grace_period=1, reduction_factor=2)}[policy]
    job = _base(tmp_path)
    job.set_sweep(sampling_algorithm="Random", early_termination=made)  # before the space: either order
    job.extend_search_space(SearchSpace(learning_rate=Choice([0.01, 0.001])))
    job.dump(tmp_path / "job.yml")
    back = visionsweep.load_job(tmp_path / "job.yml")
    assert back.sweep["early_termination"] == made and back.sweep["sampling_algorithm"] == "Random"
    assert load_spec(tmp_path / "job.yml").policy.type == made.type


def _yaml_error(text: str, tmp_path) -> str:
    (tmp_path / "bad.yml").write_text(text)
    with pytest.raises(SpecError) as e:
        load_spec(tmp_path / "bad.yml")
    return re.sub(r"^\S*bad\.yml:\d+: ", "", str(e.value))


BASE_YAML = f"""task: image_classification
target_column_name: label
training_data: {{path: {Path(FIXTURES, SAMPLE, "train").resolve()}, type: mltable}}
"""


@pytest.mark.parametrize("case", ["limits", "metric", "parameter", "distribution", "policy"])
def test_a_wrong_argument_fails_with_the_yaml_paths_message(tmp_path, case):
    from visionsweep.automl import ClassificationPrimaryMetrics, SearchSpace
    from visionsweep.sweep import BanditPolicy, Choice, QUniform

    job = _base(tmp_path)
    if case == "limits":
        call, yml = lambda: job.set_limits(max_trials=0), "limits: {max_trials: 0}\n"
    elif case == "metric":
        def call():
            job.primary_metric = ClassificationPrimaryMetrics.AUC_WEIGHTED
        yml = "primary_metric: auc_weighted\n"
    elif case == "parameter":
        call, yml = lambda: job.set_training_parameters(learning_rate=2), "training_parameters: {learning_rate: 2}\n"
    elif case == "distribution":
        call = lambda: job.extend_search_space(SearchSpace(training_batch_size=QUniform(64, 16, 16)))  # noqa: E731
        yml = ("search_space:\n  - training_batch_size: {type: quniform, min_value: 64, max_value: 16, q: 16}\n"
               "sweep: {sampling_algorithm: random}\n")
    else:
        def call():
            job.extend_search_space(SearchSpace(learning_rate=Choice([0.01])))
            job.set_sweep(sampling_algorithm="random", early_termination=BanditPolicy(slack_factor=0.1,
                                                                                      slack_amount=0.1))
        yml = ("search_space:\n  - learning_rate: {type: choice, values: [0.01]}\n"
               "sweep: {sampling_algorithm: random, early_termination: {type: bandit, slack_factor: 0.1, "
               "slack_amount: 0.1}}\n")
    before = job._to_yaml()
    with pytest.raises(SpecError) as e:
        call()
    where, _, message = str(e.value).partition(": ")
    assert where in ("set_limits", "setting primary_metric", "set_training_parameters", "extend_search_space",
                     "set_sweep")
    assert message == _yaml_error(BASE_YAML + yml, tmp_path)
    if case != "policy":
        assert job._to_yaml() == before  # a refused change leaves the job as it was


def test_the_other_tasks_constructors_and_their_metrics(tmp_path):
    from visionsweep import Input, automl
    from visionsweep.automl import (
        ClassificationMultilabelPrimaryMetrics,
        InstanceSegmentationPrimaryMetrics,
        ObjectDetectionPrimaryMetrics,
    )

    data = Input(path=str(Path(FIXTURES, SAMPLE, "train").resolve()))
    common = {"training_data": data, "target_column_name": "label"}
    made = [make(**common, primary_metric=metric) for make, metric in (
        (automl.image_classification_multilabel, ClassificationMultilabelPrimaryMetrics.IOU),
        (automl.image_object_detection, ObjectDetectionPrimaryMetrics.MEAN_AVERAGE_PRECISION),
        (automl.image_instance_segmentation, InstanceSegmentationPrimaryMetrics.MEAN_AVERAGE_PRECISION))]
    assert [j.validated().primary_metric for j in made] == ["iou", "mean_average_precision", "mean_average_precision"]
    assert made[0].task == "image_classification_multilabel"
    assert type(made[2]).__name__ == "ImageInstanceSegmentationJob"
    made[1].set_training_parameters(model_name="yolov5", model_size="small")
    assert made[1].validated().training_parameters["model_size"] == "small"
    with pytest.raises(SpecError, match="^set_training_parameters: training_parameters.model_size: "):
        made[0].set_training_parameters(model_size="small")  # yolov5's setting, not a classifier's


def test_an_input_mode_is_kept_with_a_note_and_credentials_are_not_shown(tmp_path):
    from visionsweep import Input, automl
    from visionsweep.constants import AssetTypes, InputOutputModes

    job = automl.image_classification(
        training_data=Input(type=AssetTypes.MLTABLE, path=str(Path(FIXTURES, SAMPLE, "train").resolve()),
                            mode=InputOutputModes.RO_MOUNT),
        target_column_name="label",
        visionsweep={"storage_options": {"az": {"account_name": "acct", "account_key": "c2VjcmV0LWtleS12YWx1ZQ=="}}})
    assert any(n.startswith("training_data.mode: 'ro_mount'") for n in job.validated().notes())
    assert "c2VjcmV0LWtleS12YWx1ZQ==" not in repr(job) and "account_key: '***'" in repr(job)
    job.dump(tmp_path / "job.yml")  # the file itself keeps them: it is what `visionsweep run` reads
    assert "c2VjcmV0LWtleS12YWx1ZQ==" in (tmp_path / "job.yml").read_text()
    with pytest.raises(SpecError, match=r"^Input|training_data.mode"):
        automl.image_classification(training_data=Input(path="x", mode="sideways"), target_column_name="label")


def tiny_job(small_mltable):
    """One trial, one epoch of a small MobileNetV2 at 32 px on the 3-class sample (from random initialisation:
    these tests are about the API, tests/test_weights.py about pretrained starts)."""
    from visionsweep import Input, automl

    job = automl.image_classification(training_data=Input(path=str(small_mltable)), target_column_name="label",
                                      experiment_name="python-api", visionsweep={"pretrained": False})
    job.set_training_parameters(model_name="mobilenetv2", number_of_epochs=1, training_batch_size=16,
                                training_crop_size=32, validation_resize_size=32, validation_crop_size=32)
    return job


@pytest.mark.ray
def test_visionsweep_run_returns_the_best_trial_leaderboard_and_package(ray_session, small_mltable, tmp_path):
    import visionsweep

    result = visionsweep.run(tiny_job(small_mltable), output=tmp_path / "run", echo=None)
    assert result.run_folder == str(tmp_path / "run") and result.primary_metric == "accuracy"
    assert result.best_trial and len(result.leaderboard) == 1
    assert result.leaderboard[0]["trial_id"] == result.best_trial
    assert result.leaderboard[0]["accuracy"] == pytest.approx(result.best_metric)
    assert result.best_params["model_name"] == "mobilenetv2" and result.best_params["learning_rate"] > 0
    assert (Path(result.package) / "model.json").is_file()
    # the package's commands, from Python: the library functions `visionsweep predict` and `export` call
    image = str(next((Path(small_mltable)).rglob("*.png")))
    [answer] = result.predict([image])
    assert answer["filename"] == image and len(answer["probs"]) == len(answer["labels"]) >= 2
    assert sum(answer["probs"]) == pytest.approx(1.0, abs=1e-3)
    onnx_path = result.export(tmp_path / "best.onnx")
    assert onnx_path == str(tmp_path / "best.onnx") and json.loads(Path(onnx_path + ".json").read_text())[
        "input"]["name"] == "input1"


@pytest.mark.ray
def test_mlclient_submits_streams_and_gets_a_job(small_mltable, tmp_path, monkeypatch):
    """``jobs.create_or_update`` + ``stream``, as the notebook's last cell; the job runs in a process of its own
    (no RAY_ADDRESS: an embedded Ray), and another client reads it by name."""
    from visionsweep import MLClient

    monkeypatch.setenv("VISIONSWEEP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ml_client = MLClient(credential=None, subscription_id="sub", resource_group_name="rg", workspace_name="ws")
    returned_job = ml_client.jobs.create_or_update(tiny_job(small_mltable))
    assert returned_job.name.startswith("python-api-") and returned_job.status in ("Running", "Completed")
    out = io.StringIO()
    ml_client.jobs.stream(returned_job.name, file=out)  # returns when the job has ended
    text = out.getvalue()
    assert text.startswith(f"RunId: {returned_job.name}\n") and "sweep: single mode" in text
    assert re.search(r"Status: Completed\nBest trial: \S+ \(accuracy [0-9.]+\); model package: ", text)

    job = MLClient().jobs.get(returned_job.name)
    assert job.status == "Completed" and job.best_trial == job.result.best_trial
    assert (Path(job.result.package) / "model.json").is_file()
    assert Path(job.run_folder) == tmp_path / "home" / "jobs" / returned_job.name / "run"
    submitted = (tmp_path / "home" / "jobs" / returned_job.name / "job.yml").read_text()
    assert f"path: {small_mltable}" in submitted  # the job file moved: its data path was made absolute
    assert (tmp_path / "home" / "jobs" / returned_job.name / "job.yml").stat().st_mode & 0o077 == 0  # may hold keys
    assert [j.name for j in ml_client.jobs.list()] == [returned_job.name]
    # the notebook's MLflow cells: the parent run's tag names the best child run
    from mlflow import MlflowClient

    mlflow_client = MlflowClient(tracking_uri=job.mlflow_tracking_uri)
    best_child_run_id = mlflow_client.get_run(job.mlflow_run_id).data.tags["automl_best_child_run_id"]
    assert mlflow_client.get_run(best_child_run_id).info.run_name == job.best_trial

    with pytest.raises(VisionsweepError, match="no job named 'nope'"):
        ml_client.jobs.get("nope")


def test_a_failed_job_streams_its_error_and_raises(tmp_path, monkeypatch):
    """A job whose data is gone is refused at submission; one whose data breaks after it fails in its process:
    ``stream`` shows the error and raises, ``get`` says Failed."""
    import shutil

    from visionsweep import Input, MLClient, automl

    data = tmp_path / "data"
    shutil.copytree(Path(FIXTURES, SAMPLE, "train"), data)
    monkeypatch.setenv("VISIONSWEEP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ml_client = MLClient()
    job = automl.image_classification(training_data=Input(path=str(data)), target_column_name="label",
                                      name="doomed", visionsweep={"pretrained": False})
    shutil.move(data, tmp_path / "moved")
    with pytest.raises(SpecError, match=f"training_data.path: {data} does not exist"):
        ml_client.jobs.create_or_update(job)
    assert not (tmp_path / "home" / "jobs" / "doomed" / "submission.json").exists()

    shutil.move(tmp_path / "moved", data)
    (data / "MLTable").write_text("paths:\n  - file: ./missing.jsonl\n")
    submitted = ml_client.jobs.create_or_update(job)
    out = io.StringIO()
    with pytest.raises(VisionsweepError, match="job doomed failed; its output: .*output.log"):
        ml_client.jobs.stream(submitted.name, file=out)
    assert "error: " in out.getvalue() and "missing.jsonl" in out.getvalue()
    assert ml_client.jobs.get("doomed").status == "Failed" and ml_client.jobs.get("doomed").result is None


def test_the_readmes_notebook_cells_build_a_valid_sweep(monkeypatch):
    """README.md's side-by-side: the right column's imports and the job cells (up to the submission) make a
    manual sweep that validates; the left column's imports are the service's, one for one."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## From Python"):readme.index("## Watching a sweep")]
    rows = [ln.split("|")[1:3] for ln in section.splitlines() if ln.startswith("| `from azure")]
    imports = [right.strip().strip("`") for _, right in rows]
    assert [left.strip().strip("`").replace("azure.ai.ml", "visionsweep") for left, _ in rows] == imports
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    cells = code[:code.index("returned_job")].replace("ml_client = MLClient(", "ml_client = MLClient  # (")
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    scope: dict = {}
    exec("\n".join(imports) + "\n" + cells, scope)
    job = scope["job"].validated()
    assert job.mode == "manual" and len(job.search_space) == 2 and job.policy.type == "bandit"
