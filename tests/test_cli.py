"""The command line: user errors are one clear message and exit status 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys


def cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "visionsweep.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env)


def test_bad_job_prints_the_field_and_exits_2(tmp_path):
    job = tmp_path / "job.yml"
    job.write_text("task: image_classification\ntarget_column_name: label\ntraining_data: {path: d}\n"
                   "limits:\n  max_trials: 5000\n")
    r = cli("run", str(job))
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: {job}:5: limits.max_trials:") and "Traceback" not in r.stderr


def test_a_run_folder_inside_a_ray_job_working_directory_is_warned_about(tmp_path):
    # `ray job submit --working-dir .` runs the command in Ray's unpacked copy of the folder: a relative --output
    # lands there, and Ray deletes that copy. (The job then fails on its data, after the warning.)
    pkg = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123"
    pkg.mkdir(parents=True)
    (pkg / "d.jsonl").write_text('{"image_url": 3}\n')
    (pkg / "job.yml").write_text("task: image_classification\ntarget_column_name: label\n"
                                 "training_data: {path: d.jsonl}\nvisionsweep: {pretrained: false}\n")
    r = cli("run", "job.yml", "--output", "runs/my-sweep", cwd=pkg)
    assert r.returncode == 2 and "d.jsonl:1: expected an 'image_url' string" in r.stderr
    assert f"warning: the run folder {pkg / 'runs' / 'my-sweep'} is inside this Ray job's working directory" \
        in r.stderr
    assert "give --output an absolute path" in r.stderr.lower()
    ok = cli("run", "job.yml", "--output", str(tmp_path / "runs" / "kept"), cwd=pkg)
    assert ok.returncode == 2 and "working directory" not in ok.stderr


def test_version():
    from importlib.metadata import version

    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"visionsweep {version('visionsweep')}"


def test_missing_job_file(tmp_path):
    r = cli("validate", str(tmp_path / "nope.yml"))
    assert r.returncode == 2 and "cannot read the job file" in r.stderr


def test_bad_dataset_line_is_reported_with_file_and_line(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"image_url": "a.png", "label": "x"}\n{"image_url": 3}\n')
    job = tmp_path / "job.yml"
    job.write_text("task: image_classification\ntarget_column_name: label\ntraining_data: {path: d.jsonl}\n"
                   "visionsweep: {pretrained: false}\n")
    r = cli("run", str(job), "--output", str(tmp_path / "run"))
    assert r.returncode == 2 and "d.jsonl:2: expected an 'image_url' string" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_model_that_cannot_run_here_names_the_key_before_any_trial(tmp_path):
    job = tmp_path / "job.yml"
    job.write_text("task: image_object_detection\ntarget_column_name: label\ntraining_data: {path: d}\n"
                   "training_parameters: {model_name: nosuchnet_r50_fpn_1x_coco}\n")
    r = cli("run", str(job))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    # with the OpenMMLab extra: not in the zoo; without it: the install command
    assert "model_name nosuchnet_r50_fpn_1x_coco: no MMDetection config of that name" in r.stderr \
        or "make openmmlab" in r.stderr


def test_predict_with_a_non_package_and_a_non_image(tmp_path, sample):
    r = cli("predict", str(tmp_path), str(sample / "images" / "test_0000.png"))
    assert r.returncode == 2 and "not a model package (model.safetensors is missing)" in r.stderr


def test_validate_prints_the_resolved_job(sample, mobilenet_weights):
    import os
    from pathlib import Path

    job = Path(__file__).parent.parent / "scheduler" / "jobs" / "fashion_mnist_sweep.yml"
    # as `make demo` runs it: MobileNetV2's weights from the store `make setup` fills (validate looks, as run does)
    r = cli("validate", str(job), env={**os.environ, "VISIONSWEEP_WEIGHTS_STORE": str(mobilenet_weights.parent)})
    assert r.returncode == 0 and "mode: manual" in r.stdout and "primary_metric: accuracy" in r.stdout
    assert f"# weights: mobilenetv2 from weights store ({mobilenet_weights}; " in r.stdout
