"""MMDetection 3.x models and YOLOv5 (mmyolo) through the detection task (SPEC §5.2, §5.3, §6.6, §7.1):
config names, training, prediction, packages and serving responses, on CPU at 64 px."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from trainers import hyperparameters as hp
from trainers.errors import VisionsweepError
from trainers.models.openmmlab import require

try:
    require(yolo=True)
except VisionsweepError as e:  # the OpenMMLab extra is part of `make test`; elsewhere its tests skip
    if os.environ.get("CI"):
        raise
    pytest.skip(str(e), allow_module_level=True)

from serving.predictor import Predictor  # noqa: E402
from trainers.data import prepare_data  # noqa: E402
from trainers.engine import train  # noqa: E402
from trainers.hyperparameters import resolve_hyperparameters  # noqa: E402
from trainers.models.names import CURATED_MMDET as CURATED  # noqa: E402
from trainers.models.openmmlab import config_path  # noqa: E402

CURATED_MMDET = [m for names in CURATED.values() for m in names]  # §5.3, by task


def test_zoo_names_in_every_spelling_find_their_config():
    assert config_path("atss_r50_fpn_1x_coco").name == "atss_r50_fpn_1x_coco.py"
    # the curated registry names of §5.3 (metafile names, some spelt differently from the files)
    for name in CURATED_MMDET:
        assert config_path(name).is_file(), name
    with pytest.raises(VisionsweepError, match="no MMDetection config of that name.*close names: atss_r50_fpn_1x_coco"):
        config_path("atss_r50_fpn_1x_cocoa")
    # where there is internet, download_weights fetches the zoo's COCO checkpoint named in the metafile
    from trainers.models.openmmlab import checkpoint_url

    assert checkpoint_url("atss_r50_fpn_1x_coco", {}).startswith("https://download.openmmlab.com/mmdetection/")
    assert "yolov5_s-v61" in checkpoint_url("yolov5", {"model_size": "small"})


def test_a_zoo_style_checkpoint_loads_from_pretrained_weights(tmp_path):
    from trainers.models.openmmlab import build_mm_detector

    h = resolve_hyperparameters(hp.DETECTION, {"model_name": "yolov5", "image_size": 64, "model_size": "small"}, {})
    torch.manual_seed(1)
    source = build_mm_detector("yolov5", 2, h)
    # OpenMMLab's layout: {"state_dict": ..., "meta": ...}, keys without the adapter's "model." prefix
    torch.save({"state_dict": source.model.state_dict(), "meta": {"epoch": 300}}, tmp_path / "zoo.pth")
    torch.manual_seed(2)
    loaded = build_mm_detector("yolov5", 2, h, weights=str(tmp_path / "zoo.pth"))
    key = "model.backbone.stem.conv.weight"
    assert torch.equal(dict(loaded.named_parameters())[key], dict(source.named_parameters())[key])


def _data(task, shapes):
    tr, va = shapes
    data = prepare_data(task, "label", str(tr), str(va), 0.2, 0)
    data.train, data.valid = data.train[:6], data.valid[:2]
    return data


def _step_and_predict(model, image: torch.Tensor, target: dict) -> dict:
    """One training step (a finite loss, gradients) and one prediction of well-formed boxes."""
    model.train()
    loss = sum(model([image], [target]).values())
    loss.backward()
    assert math.isfinite(float(loss)) and any(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        (out,) = model([image])
    assert out["boxes"].shape[1] == 4 and len(out["labels"]) == len(out["scores"]) == len(out["boxes"])
    return out


def _yolov5_package(tmp_path, h: dict):
    """An untrained yolov5 (small) package with two classes."""
    from trainers.models.openmmlab import build_mm_detector
    from trainers.package import save_package

    torch.manual_seed(0)
    return save_package(tmp_path / "pkg", model=build_mm_detector("yolov5", 2, h), task=hp.DETECTION,
                        classes=["disc", "square"], hyperparameters=h, metrics={})


@pytest.mark.parametrize("task,model,extra", [
    (hp.DETECTION, "retinanet_r18_fpn_1x_coco", {"min_size": 64, "max_size": 64}),
    (hp.SEGMENTATION, "mask-rcnn_r18_fpn_8xb8-amp-lsj-200e_coco", {"min_size": 64, "max_size": 64}),
    (hp.DETECTION, "yolov5", {"image_size": 64, "model_size": "small", "multi_scale": True}),
])
def test_an_openmmlab_model_trains_predicts_and_serves_from_its_package(task, model, extra, shapes_detection,
                                                                       shapes_segmentation, tmp_path):
    data = _data(task, shapes_segmentation if task == hp.SEGMENTATION else shapes_detection)
    h = resolve_hyperparameters(task, {"model_name": model, "number_of_epochs": 1, "training_batch_size": 2,
                                       "validation_batch_size": 2, "optimizer": "adamw", "learning_rate": 0.0005,
                                       "learning_rate_scheduler": "none", "layers_to_freeze": 1,
                                       "validation_metric_type": "coco", **extra}, {})
    reports = []
    train(h, data, lambda m, save: reports.append((m, save)), device="cpu")
    m, save = reports[-1]
    assert math.isfinite(m["train_loss"]) and 0.0 <= m["mean_average_precision"] <= 1.0
    assert "coco_mean_average_precision_50" in m or "mean_average_precision_50" in m
    save(str(tmp_path / "pkg"))
    pred = Predictor(str(tmp_path / "pkg"), device="cpu", settings={"box_score_threshold": 0.0})
    image = open(data.valid[0].image_url, "rb").read()
    (out,) = pred.predict_images([image])
    assert out["boxes"], "a score threshold of 0 keeps every detection"
    for b in out["boxes"][:5]:
        assert b["label"] in data.classes and 0 <= b["box"]["topX"] <= b["box"]["bottomX"] <= 1
        assert ("polygon" in b) == (task == hp.SEGMENTATION)
    # layers_to_freeze 1: the stem kept its initial weights (the loop seeds with random_seed 0), the rest trained
    from trainers.models.openmmlab import build_mm_detector

    torch.manual_seed(0)
    init = dict(build_mm_detector(model, len(data.classes), h, segmentation=task == hp.SEGMENTATION).named_parameters())
    trained = dict(pred.pkg.model.named_parameters())
    stem = [n for n in trained if n.startswith(("model.backbone.stem.", "model.backbone.conv1."))]
    assert stem and all(torch.equal(trained[n], init[n]) for n in stem)
    assert not all(torch.equal(trained[n], init[n]) for n in trained if n.startswith("model.backbone.layer4.")
                   or n.startswith("model.backbone.stage4."))


def test_yolov5_training_samples_are_mosaics_of_the_image_size(shapes_detection):
    from trainers.tasks import make_task

    data = _data(hp.DETECTION, shapes_detection)
    task = make_task(hp.DETECTION, data.classes)
    for mosaic in (True, False):
        h = resolve_hyperparameters(hp.DETECTION, {"model_name": "yolov5", "image_size": 96,
                                                   "advanced_settings": {"apply_mosaic_for_yolo": mosaic}}, {})
        ds = task.train_dataset(h, data)
        counts = []
        for i in range(len(ds)):
            img, t = ds[i]
            assert img.shape == (3, 96, 96) and img.dtype == torch.float32
            b = t["boxes"]
            assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all() and b.min() >= 0 and b.max() <= 96
            assert len(t["labels"]) == len(b)
            counts.append(len(b))
        if mosaic:  # four images' shapes in one sample (each image has 1-2)
            assert max(counts) > 2


@pytest.mark.ray
def test_a_sweep_mixes_an_mmdetection_model_with_the_default_yolov5(ray_session, shapes_detection, tmp_path):
    from scheduler.controller import run_job
    from scheduler.spec import parse_job

    train, valid = shapes_detection
    # no model_name in the second sub-space: the task's default model, yolov5 (§5.1)
    job = parse_job(f"""\
task: image_object_detection
target_column_name: label
training_data: {{path: {train}, type: mltable}}
validation_data: {{path: {valid}, type: mltable}}
visionsweep: {{pretrained: false, tracking: {{enabled: false}}}}
limits: {{max_trials: 2, max_concurrent_trials: 1}}
training_parameters:
  number_of_epochs: 1
  training_batch_size: 4
  validation_batch_size: 4
  optimizer: adamw
  learning_rate: 0.0005
search_space:
  - model_name: {{type: choice, values: [retinanet_r18_fpn_1x_coco]}}
    min_size: {{type: choice, values: [64]}}
    max_size: {{type: choice, values: [64]}}
  - image_size: {{type: choice, values: [64]}}
    model_size: {{type: choice, values: [small]}}
sweep:
  sampling_algorithm: grid
""", source=tmp_path / "job.yml")
    result = run_job(job, tmp_path / "run", echo=lambda s: None)
    assert sorted(r["status"] for r in result.rows) == ["completed", "completed"]
    models = sorted(json.loads((t / "params.json").read_text())["sampled"].get("model_name", "yolov5")
                    for t in (tmp_path / "run" / "trials").iterdir())
    assert models == ["retinanet_r18_fpn_1x_coco", "yolov5"]
    cfg = json.loads((tmp_path / "run" / "best" / "training_config.json").read_text())
    assert cfg["model_name"] in ("yolov5", "retinanet_r18_fpn_1x_coco")
    (out,) = Predictor(str(tmp_path / "run" / "best"), device="cpu", settings={"box_score_threshold": 0.0}
                       ).predict_images([open(next((train.parent / "images").glob("*.png")), "rb").read()])
    assert "boxes" in out


def test_yolov5_exports_to_onnx_as_n_by_6_after_nms(tmp_path):
    import onnxruntime as ort

    from trainers.models.openmmlab import build_mm_detector
    from trainers.package.onnx import export_onnx

    h = resolve_hyperparameters(hp.DETECTION, {"model_name": "yolov5", "image_size": 64, "model_size": "small"}, {})
    pkg = _yolov5_package(tmp_path, h)
    x = torch.rand(2, 3, 64, 64)
    # untrained, the boxes are large, overlap and score alike, so which of two near-twins NMS keeps flips on
    # float noise: the check runs with NMS at IoU 1 (only exact duplicates go) over the ~15 most confident
    from trainers.package.onnx import _YoloGraph

    loose = {**h, "box_score_threshold": 0.0, "nms_iou_threshold": 1.0}
    det = build_mm_detector("yolov5", 2, loose).eval()
    with torch.no_grad():
        conf = _YoloGraph(det, 64, loose)(x)[0][:, 4]
    thr = float(conf.sort(descending=True).values[min(15, len(conf) - 1)])
    r = export_onnx(str(pkg), tmp_path / "y.onnx", batch_size=2, check_images=[x],
                    settings={"box_score_threshold": thr, "nms_iou_threshold": 1.0})
    sess = ort.InferenceSession(str(r.path))
    assert [o.name for o in sess.get_outputs()] == ["output_0", "output_1"]
    outs = sess.run(None, {"input": x.numpy()})
    assert all(o.ndim == 2 and o.shape[1] == 6 and len(o) > 0 for o in outs)
    assert set(outs[0][:, 5].tolist()) <= {0.0, 1.0}
    assert r.max_abs_diff < 1e-2  # pixels and confidences
    # the graph's decoding is mmyolo's: every exported row is one of the package predictor's detections
    from trainers.workers import Runtime

    pred = Predictor(str(pkg), device="cpu", settings={"box_score_threshold": thr, "nms_iou_threshold": 1.0})
    (ref,) = pred.task.predict(pred.pkg.model, [x[0]], pred.pkg.settings, Runtime(torch.device("cpu")))
    rows = torch.cat([ref["boxes"], ref["scores"][:, None], ref["labels"][:, None].float() - 1], 1)
    assert torch.cdist(torch.from_numpy(outs[0]), rows, p=float("inf")).min(1).values.max() < 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("name", CURATED_MMDET)
def test_each_curated_mmdetection_model_takes_a_training_step_and_predicts(name):
    """§5.3's curated models (R-50/R-101/X-101/Swin: about 10-40 s each on CPU, hence `-m slow`)."""
    from trainers.models.openmmlab import build_mm_detector

    seg = "mask-rcnn" in name
    task = hp.SEGMENTATION if seg else hp.DETECTION
    h = resolve_hyperparameters(task, {"model_name": name, "min_size": 128, "max_size": 128,
                                       "box_score_threshold": 0.0}, {})
    torch.manual_seed(0)
    model = build_mm_detector(name, 2, h, segmentation=seg)
    image = torch.rand(3, 128, 128)
    target = {"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([1])}
    if seg:
        target["masks"] = torch.zeros(1, 128, 128, dtype=torch.uint8)
        target["masks"][0, 10:70, 10:60] = 1
    out = _step_and_predict(model, image, target)
    assert ("masks" in out) == seg


@pytest.mark.parametrize("name", ["rtmdet_tiny_8xb32-300e_coco", "yolox_tiny_8xb8-300e_coco",
                                  "detr_r18_8xb2-500e_coco"])
def test_families_beyond_fpn_train_predict_and_package(name, tmp_path):
    """RTMDet (CSPNeXt-PAFPN: its upsampled P5 is concatenated with P4, so the input must be padded to the
    stride of 32, as the zoo's own pipeline pads to 640 x 640), YOLOX and a DETR: a training step on an image of
    odd size, a prediction, and a package that predicts the same after loading."""
    from trainers.models.openmmlab import build_mm_detector, model_config
    from trainers.package import load_package, save_package

    h = resolve_hyperparameters(hp.DETECTION, {"model_name": name, "min_size": 70, "max_size": 90,
                                               "box_score_threshold": 0.0}, {})
    pre = model_config(name, 2, h)["data_preprocessor"]
    assert pre["pad_size_divisor"] == 32
    # RTMDet and YOLOX were trained on BGR input (their preprocessors do not convert): the RGB the adapter feeds
    # is flipped for them, not for the DETR (whose config converts BGR to RGB)
    assert pre["rgb_to_bgr"] == (not name.startswith("detr")) and not pre["bgr_to_rgb"]
    torch.manual_seed(0)
    model = build_mm_detector(name, 2, h)
    image = torch.rand(3, 70, 83)
    out = _step_and_predict(model, image, {"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]),
                                           "labels": torch.tensor([1])})
    pkg = save_package(tmp_path / "pkg", model=model, task=hp.DETECTION, classes=["a", "b"], hyperparameters=h,
                       metrics={})
    with torch.no_grad():
        (again,) = load_package(pkg).model([image])
    assert torch.allclose(again["scores"], out["scores"]) and torch.allclose(again["boxes"], out["boxes"])


def test_predict_and_export_of_a_yolov5_package_print_only_their_output_on_stdout(tmp_path, sample):
    # mmengine would log every layer's initialisation when the model is built: not at all (only its warnings), and
    # whatever a library logs goes to stderr, so that `predict | jq` works
    import subprocess
    import sys

    h = resolve_hyperparameters(hp.DETECTION, {"model_name": "yolov5", "image_size": 64, "model_size": "small"}, {})
    pkg = _yolov5_package(tmp_path, h)
    cli = [sys.executable, "-m", "visionsweep.cli"]
    pred = subprocess.run(cli + ["predict", str(pkg), str(sample / "images" / "test_0000.png")],
                          capture_output=True, text=True, timeout=300)
    assert pred.returncode == 0, pred.stderr[-2000:]
    assert isinstance(json.loads(pred.stdout)[0]["boxes"], list)  # stdout is the JSON and nothing else
    assert "Initialized by user-defined" not in pred.stderr + pred.stdout  # no per-parameter initialisation log
    assert len(pred.stderr.splitlines()) <= 2, pred.stderr[-2000:]  # (that log: 4 lines a parameter, 709 in all)
    exp = subprocess.run(cli + ["export", str(pkg), "--no-check", "--output", str(tmp_path / "y.onnx")],
                         capture_output=True, text=True, timeout=300)
    assert exp.returncode == 0, exp.stderr[-2000:]
    assert exp.stdout.splitlines() == [exp.stdout.strip()] and exp.stdout.startswith(f"wrote {tmp_path / 'y.onnx'}")
