"""Data-parallel trials (SPEC §3.6, §11.1): a trial of several workers under Ray Train, gloo on CPU."""

from __future__ import annotations

import json

import pytest

from scheduler.controller import run_job
from scheduler.runfolder import read_metrics
from tests.test_sweep import make_job

pytestmark = pytest.mark.ray

# Same seed, same data; the 2-worker trial's per-worker batch is half the single worker's, so both see the same
# global batches in the same order (one seeded permutation, split by DistributedSampler), each image augmented
# alike (seeded by trial seed, epoch and image: trainers.data.draws), and BatchNorm normalises with the global
# batch's statistics (SyncBatchNorm, the default). learning_rate 0: training steps amplify rounding differences
# chaotically (one process alone, with 1 vs 2 threads, differs by ~1e-2 in its epoch-2 losses here), so trained
# metrics admit no rounding-derived tolerance; tests/test_batchnorm.py compares one step's gradients instead.
# What may differ then is float32 rounding of the same sums (BatchNorm statistics, loss averages) added in
# another order, a few units of 2^-24 (~6e-8) each: RTOL = 1e-5 is ~170 of them, room for the ~20 BatchNorm
# layers in the way (seen: <= 2e-7). Per-worker statistics (sync_batchnorm: false) move the losses by 5e-3 to 9e-2.
RTOL = 1e-5


def _job(data, workers: int, batch: int, extra: str = ""):
    text = (f"visionsweep:\n  workers_per_node: {workers}\n  cpus_per_trial: 0.5\n  tracking: {{enabled: false}}\n"
            + extra)
    job = make_job(data, text, epochs=2, batch=batch)
    job.training_parameters.update(model_name="resnet18", random_seed=7, learning_rate=0.0)
    return job


def _metrics(run):
    (trial,) = (run / "trials").iterdir()
    return read_metrics(trial)


def test_two_workers_match_one_worker_and_cover_the_whole_validation_set(ray_session, small_mltable, tmp_path):
    one = run_job(_job(small_mltable, 1, 16), tmp_path / "one", echo=lambda s: None)
    two = run_job(_job(small_mltable, 2, 8), tmp_path / "two", echo=lambda s: None)
    m1, m2 = _metrics(one.run_dir), _metrics(two.run_dir)
    n_valid = json.loads((tmp_path / "two" / "data" / "summary.json").read_text())["validation_images"]

    assert [m["epoch"] for m in m2] == [1, 2]
    assert all(m["workers"] == 2 for m in m2) and all("workers" not in m for m in m1)
    # validation metrics are gathered over every rank's slice, not rank 0's shard
    assert all(m["validation_images"] == n_valid for m in m1 + m2)
    for a, b in zip(m1, m2):
        # the same batches and statistics (see RTOL); accuracy over 18 images is not compared: a near tie could flip
        for k in ("train_loss", "validation_loss"):
            assert b[k] == pytest.approx(a[k], rel=RTOL), (k, a["epoch"], a[k], b[k])
    # rank 0's checkpoint is the exported best package
    assert (two.run_dir / "best" / "model.safetensors").is_file()
    assert json.loads((two.run_dir / "best" / "metrics.json").read_text())["workers"] == 2
    # ... with the gathered validation outputs in the set's order (the report draws them): those one worker saw
    from trainers.validation_outputs import read_outputs

    o1, o2 = read_outputs(one.run_dir / "best"), read_outputs(two.run_dir / "best")
    valid = [json.loads(ln)["image_url"] for ln in (two.run_dir / "data" / "valid.jsonl").read_text().splitlines()]
    assert list(o2["image_urls"]) == valid == list(o1["image_urls"])
    assert o2["targets"].tolist() == o1["targets"].tolist()
    if int(o1["epoch"]) == int(o2["epoch"]):  # the same best epoch (a near tie of accuracy could pick another)
        assert o2["probabilities"] == pytest.approx(o1["probabilities"], rel=1e-4, abs=1e-6)


def test_a_group_that_cannot_be_placed_is_an_error_not_a_wait(ray_session, small_mltable, tmp_path):
    from trainers.errors import VisionsweepError

    # 2 nodes x 1 CPU per worker + the driver's 0.1 CPU do not fit the 2-CPU embedded Ray, which never grows
    job = make_job(small_mltable,
                   "properties: {node_count_per_trial: '2'}\nvisionsweep: {tracking: {enabled: false}}\n")
    with pytest.raises(VisionsweepError) as e:
        run_job(job, tmp_path / "run", echo=lambda s: None)
    assert str(e.value) == ("a data-parallel trial needs 2 workers x 1 CPU (visionsweep.cpus_per_trial) + 0.1 CPU for "
                            "its driver = 2.1 CPUs, but the cluster has 2; lower cpus_per_trial, workers_per_node or "
                            "node_count_per_trial to fit")


def test_a_data_parallel_detection_trial_validates_the_whole_set(ray_session, shapes_detection, tmp_path):
    """The same loop trains a detector under DDP; each worker predicts its slice and mAP covers all of them."""
    from scheduler.spec import parse_job

    train, valid = shapes_detection
    job = parse_job(f"""\
task: image_object_detection
target_column_name: label
training_data: {{path: {train}}}
validation_data: {{path: {valid}}}
training_parameters:
  model_name: retinanet_resnet50_fpn
  number_of_epochs: 1
  min_size: 64
  max_size: 64
  training_batch_size: 2
  optimizer: adamw
  learning_rate: 0.001
visionsweep: {{pretrained: false, workers_per_node: 2, cpus_per_trial: 0.5, tracking: {{enabled: false}}}}
""", source=tmp_path / "job.yml")
    result = run_job(job, tmp_path / "run", echo=lambda s: None)
    (m,) = _metrics(result.run_dir)
    assert m["workers"] == 2 and m["validation_images"] == 8
    assert 0.0 <= m["mean_average_precision"] <= 1.0 and "per_label_metrics" in m
    assert (result.run_dir / "best" / "model.safetensors").is_file()
    # rank 0 wrote the gathered outputs of the images the report draws, in the set's order
    from trainers.validation_outputs import read_outputs, sample_indices

    outs = read_outputs(result.run_dir / "best")
    valid = [json.loads(ln)["image_url"] for ln in (result.run_dir / "data" / "valid.jsonl").read_text().splitlines()]
    assert list(outs["image_urls"]) == [valid[i] for i in sample_indices(8)]
