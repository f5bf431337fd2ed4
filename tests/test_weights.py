"""Transfer learning by default: every model starts from its published pretrained weights, found in the order
explicit -> weights store (folder, S3, Azure) -> the libraries' caches -> the origin, checked against the
published hash, fetched once per node, recorded in the package and MLflow; and a job that cannot have them
stops before any trial with one clear error.

The real torchvision MobileNetV2 ImageNet file (``make setup`` puts it in ``.weights/``) stands in for the
published weights wherever a hash must match; other models use checkpoints of the right shape generated here.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.conftest import MOBILENET_FILE, ROOT
from trainers import hyperparameters as hp
from trainers.errors import VisionsweepError
from trainers.models.weights.manifest import entry
from trainers.models.weights.resolve import check, initial_weights
from trainers.models.weights.sources import ORIGIN_OVERRIDE_ENV, TIMEOUT_ENV, WeightsConfig, WeightsError
from trainers.models.weights.verify import STORE_INDEX, HashMismatch

TV_ORIGIN = "https://download.pytorch.org/models/"
MC = hp.MULTICLASS


def _cfg(tmp_path, **kw) -> WeightsConfig:
    kw.setdefault("download", False)
    return WeightsConfig.create(cache_dir=str(tmp_path / "node-cache"), **kw)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _reference_mobilenet(path: Path):
    import torchvision

    m = torchvision.models.mobilenet_v2()
    m.load_state_dict(torch.load(path, weights_only=True))
    return m


def _same_features(model, path: Path) -> bool:
    ref = _reference_mobilenet(path).state_dict()
    own = model.state_dict()
    return all(torch.equal(own[k], ref[k]) for k in ref if k.startswith("features."))


# --- the manifest ------------------------------------------------------------------------------------------

def test_the_manifest_is_read_from_the_libraries_that_publish_the_weights():
    from torchvision.models import MobileNet_V2_Weights, ResNet34_Weights
    from torchvision.models.detection import RetinaNet_ResNet50_FPN_Weights

    mb = entry("mobilenetv2", MC)
    assert (mb.url, mb.file, mb.sha256_prefix) == (MobileNet_V2_Weights.IMAGENET1K_V1.url, MOBILENET_FILE, "b0353104")
    assert mb.size_mb == MobileNet_V2_Weights.IMAGENET1K_V1.meta["_file_size"] and "BSD" in mb.licence
    # R-50 detectors: torchvision's COCO weights; other depths: the ImageNet ResNet under a fresh FPN and heads
    rn = entry("retinanet_resnet50_fpn", hp.DETECTION)
    assert rn.url == RetinaNet_ResNet50_FPN_Weights.COCO_V1.url and rn.target == "model" and rn.dataset == "COCO 2017"
    f34 = entry("fasterrcnn_resnet34_fpn", hp.DETECTION)
    assert f34.url == ResNet34_Weights.IMAGENET1K_V1.url and f34.target == "backbone"
    assert entry("maskrcnn_resnet34_fpn", hp.SEGMENTATION).file == f34.file  # one file per architecture
    # timm: the hub repository of the model's default pretrained tag, and its licence
    import timm

    vit = entry("vitb16r224", MC)
    assert vit.hub_id == timm.models.get_pretrained_cfg("vit_base_patch16_224").hf_hub_id
    assert vit.file == f"{vit.hub_id}/model.safetensors" and vit.licence == "apache-2.0"
    # Hugging Face: a folder named by the hub id, either spelling of §5.3
    assert entry("google-vit-base-patch16-224", MC).file == "google/vit-base-patch16-224/"


def test_openmmlab_models_take_their_zoo_checkpoint_from_the_metafiles():
    pytest.importorskip("mmyolo")
    small, medium = (entry("yolov5", hp.DETECTION, {"model_size": s}) for s in ("small", "medium"))
    # yolov5: ultralytics' release file first (tests/test_yolov5_weights.py), the mmyolo zoo's as the alternative
    assert (small.library, small.file, medium.file, small.label) == ("ultralytics", "yolov5s.pt", "yolov5m.pt",
                                                                     "yolov5 (small)")
    (zoo,) = small.alternatives
    assert zoo.library == "mmyolo" and zoo.file != medium.alternatives[0].file
    assert zoo.url.startswith("https://download.openmmlab.com/mmyolo/") and zoo.sha256_prefix in zoo.file
    atss = entry("atss_r50_fpn_1x_coco", hp.DETECTION)
    assert atss.url.startswith("https://download.openmmlab.com/mmdetection/") and len(atss.sha256_prefix) == 8


def test_weights_list_prints_the_manifest_as_json():
    out = subprocess.run([sys.executable, "-m", "visionsweep.cli", "weights", "list", "--task", hp.SEGMENTATION,
                          "--json"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    rows = {r["model_name"]: r for r in json.loads(out.stdout)}
    assert rows["maskrcnn_resnet50_fpn"]["file"] == "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    assert rows["maskrcnn_resnet18_fpn"]["target"] == "backbone" and rows["maskrcnn_resnet18_fpn"]["hash"]


# --- the sources, in order -----------------------------------------------------------------------------

def test_a_store_folder_gives_the_published_file_checked_against_its_hash(tmp_path, mobilenet_weights):
    from trainers.models.classifiers import build_model

    store = tmp_path / "store"
    store.mkdir()
    shutil.copyfile(mobilenet_weights, store / MOBILENET_FILE)
    init = initial_weights({"model_name": "mobilenetv2"}, MC, _cfg(tmp_path, store=str(store)))
    assert (init.source, init.path, init.verified) == ("store", str(store / MOBILENET_FILE), True)
    assert init.sha256 == _sha(mobilenet_weights)
    model = build_model("mobilenetv2", 3, 32, init)
    assert _same_features(model, mobilenet_weights) and model.classifier[-1].out_features == 3


def test_explicit_weights_win_over_the_store(tmp_path, mobilenet_weights):
    from trainers.models.classifiers import build_model

    torch.manual_seed(3)
    own = tmp_path / "mine.safetensors"
    import torchvision
    from safetensors.torch import save_file

    save_file(torchvision.models.mobilenet_v2(num_classes=3).state_dict(), str(own))
    store = tmp_path / "store"
    store.mkdir()
    shutil.copyfile(mobilenet_weights, store / MOBILENET_FILE)
    cfg = _cfg(tmp_path, store=str(store), explicit={"mobilenetv2": str(own)})
    init = initial_weights({"model_name": "mobilenetv2"}, MC, cfg)
    assert init.source == "explicit" and init.path == str(own) and not init.verified
    from safetensors.torch import load_file

    assert torch.equal(build_model("mobilenetv2", 3, 32, init).classifier[1].weight,
                       load_file(str(own))["classifier.1.weight"])


def test_a_damaged_file_is_refused_naming_it(tmp_path, mobilenet_weights):
    store = tmp_path / "store"
    store.mkdir()
    data = bytearray(mobilenet_weights.read_bytes())
    data[-100] ^= 0xFF
    (store / MOBILENET_FILE).write_bytes(bytes(data))
    with pytest.raises(HashMismatch, match=rf"{store / MOBILENET_FILE}: sha256 .* does not match mobilenetv2's "
                                           rf"{MOBILENET_FILE} \(expected b0353104"):
        initial_weights({"model_name": "mobilenetv2"}, MC, _cfg(tmp_path, store=str(store)))


@pytest.mark.parametrize("server", ["moto_s3", "azurite"])
def test_a_store_on_blob_storage_is_fetched_once_into_the_node_cache(server, request, tmp_path, mobilenet_weights):
    from trainers.data.storage import clear_cache

    srv = request.getfixturevalue(server)
    bucket = f"weights-{tmp_path.name[-12:].lower().replace('_', '-')}"
    with srv.env():
        clear_cache()
        srv.create(bucket)
        srv.put(bucket, f"zoo/{MOBILENET_FILE}", mobilenet_weights.read_bytes())
        cfg = _cfg(tmp_path, store=srv.url(bucket, "zoo"))
        first = initial_weights({"model_name": "mobilenetv2"}, MC, cfg)
        assert first.source == "store" and first.verified and first.sha256 == _sha(mobilenet_weights)
        assert first.path == str(tmp_path / "node-cache" / "weights" / MOBILENET_FILE)
        # the node keeps it: with the object gone, the next trial on this node reads its cache
        from trainers.data.storage import filesystem

        fs, path = filesystem(srv.url(bucket, f"zoo/{MOBILENET_FILE}"))
        fs.rm(path)
        again = initial_weights({"model_name": "mobilenetv2"}, MC, cfg)
        assert again.path == first.path and again.sha256 == first.sha256
        clear_cache()


def test_the_torch_hub_cache_is_used_as_it_is(tmp_path, monkeypatch, mobilenet_weights):
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    shutil.copyfile(mobilenet_weights, hub / MOBILENET_FILE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    init = initial_weights({"model_name": "mobilenetv2"}, MC, _cfg(tmp_path))
    assert (init.source, init.path, init.verified) == ("cache", str(hub / MOBILENET_FILE), True)


def _hf_cache(root: Path, repo: str, folder: Path) -> Path:
    """``folder``'s files laid out as huggingface_hub caches a download: blobs named by their SHA-256 (the LFS
    id), a snapshot of links to them, refs/main naming the snapshot."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    snap = repo_dir / "snapshots" / ("0" * 40)
    (repo_dir / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("0" * 40)
    for f in folder.iterdir():
        blob = repo_dir / "blobs" / _sha(f)
        shutil.copyfile(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    return repo_dir


def test_a_hugging_face_model_starts_from_the_cache_checked_by_its_blob_names(tmp_path, monkeypatch,
                                                                              tiny_hf_classifier):
    from safetensors.torch import load_file

    from trainers.models.huggingface import build

    repo = "visionsweep-tests/tiny-vit"
    repo_dir = _hf_cache(tmp_path / "hf", repo, tiny_hf_classifier)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    cfg = _cfg(tmp_path)
    init = initial_weights({"model_name": repo}, MC, cfg)
    assert init.source == "cache" and init.verified and Path(init.path).parent.name == "snapshots"
    net = build(repo, 3, init)
    published = load_file(str(tiny_hf_classifier / "model.safetensors"))
    key = "vit.embeddings.patch_embeddings.projection.weight"
    assert torch.equal(net.model.state_dict()[key], published[key])  # pretrained body
    assert net.model.classifier.out_features == 3  # the head for the job's classes
    # a blob whose content is not its name is refused
    blob = next(b for b in (repo_dir / "blobs").iterdir() if b.stat().st_size > 10_000)
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    with pytest.raises(HashMismatch, match="does not match"):
        initial_weights({"model_name": repo}, MC, cfg)
    # from scratch: the folder's config, random weights
    scratch = initial_weights({"model_name": repo}, MC, WeightsConfig.create(
        pretrained=False, cache_dir=str(tmp_path / "c2"), explicit={repo: str(tiny_hf_classifier)}, download=False))
    assert not torch.equal(build(repo, 3, scratch).model.state_dict()[key], published[key])


class _Origin(http.server.ThreadingHTTPServer):
    """A local HTTP server standing in for torchvision's download site: serves a folder, counts requests."""

    def __init__(self, folder: Path):
        self.counts: Counter = Counter()
        origin = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(folder), **kw)

            def send_head(self):
                origin.counts[(self.command, self.path)] += 1
                return super().send_head()

            def log_message(self, *a):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


@pytest.fixture
def origin(tmp_path, mobilenet_weights, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    shutil.copyfile(mobilenet_weights, site / MOBILENET_FILE)
    server = _Origin(site)
    monkeypatch.setenv(ORIGIN_OVERRIDE_ENV, f"{TV_ORIGIN}={server.url}")
    yield server
    server.shutdown()
    server.server_close()


def test_the_origin_is_asked_last_and_fills_the_node_cache(tmp_path, origin, mobilenet_weights):
    cfg = _cfg(tmp_path, download=True)
    (found,) = check(MC, [("mobilenetv2", None)], cfg)
    assert found[1].source == "origin" and found[1].where == origin.url + MOBILENET_FILE
    first = initial_weights({"model_name": "mobilenetv2"}, MC, cfg)
    assert first.source == "origin" and first.verified and first.sha256 == _sha(mobilenet_weights)
    second = initial_weights({"model_name": "mobilenetv2"}, MC, cfg)
    assert second.source == "cache" and second.path == first.path
    assert origin.counts[("GET", f"/{MOBILENET_FILE}")] == 1
    # without download_weights the origin is not asked, and the error says so
    with pytest.raises(WeightsError, match=r"the origin: not asked \(visionsweep.download_weights: false\)"):
        check(MC, [("mobilenetv2", None)], _cfg(tmp_path / "other"))


def test_missing_weights_stop_the_job_before_any_trial_naming_each_model_and_every_place(tmp_path, monkeypatch,
                                                                                       small_mltable):
    from scheduler.controller import run_job
    from scheduler.spec import parse_job

    # an origin that accepts connections and never answers: the probe gives up after the timeout
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)
    monkeypatch.setenv(ORIGIN_OVERRIDE_ENV, f"{TV_ORIGIN}=http://127.0.0.1:{hole.getsockname()[1]}/")
    monkeypatch.setenv(TIMEOUT_ENV, "1")
    store = tmp_path / "store"
    store.mkdir()
    job = parse_job(f"""\
task: image_classification
target_column_name: label
training_data: {{path: {small_mltable}}}
limits: {{max_trials: 2}}
search_space:
  - model_name: {{type: choice, values: [resnet18, resnet34]}}
sweep: {{sampling_algorithm: grid}}
visionsweep: {{weights_store: {store}, cache: {{dir: {tmp_path / 'cache'}}}}}
""", source=tmp_path / "job.yml")
    try:
        with pytest.raises(WeightsError) as e:
            run_job(job, tmp_path / "run", echo=lambda s: None)
    finally:
        hole.close()
    msg = str(e.value)
    for name, file in (("resnet18", "resnet18-f37072fd.pth"), ("resnet34", "resnet34-b627a593.pth")):
        assert f"{name} needs {file}" in msg and f"the weights store {store / file}: not there" in msg
        assert f"{file}: no answer within 1s" in msg
    assert "the torch hub cache" in msg and "this node's weights cache" in msg
    assert f"visionsweep weights pull resnet18 resnet34 --to {store}" in msg
    assert not (tmp_path / "run" / "trials").exists() and not (tmp_path / "run" / "data").exists()


def test_pretrained_false_needs_no_weights_and_says_so(tmp_path, small_mltable):
    from scheduler.preflight import check_weights, weights_config
    from scheduler.spec import parse_job

    job = parse_job(f"task: image_classification\ntarget_column_name: label\ntraining_data: {{path: {small_mltable}}}\n"
                    "training_parameters: {model_name: resnet152}\nvisionsweep: {pretrained: false}\n")
    assert any("every model starts from random initialisation" in n for n in job.notes())
    _, plan = check_weights(job, weights_config(job))
    assert plan == {"pretrained": False, "models": {}}
    (tmp_path / "job.yml").write_text(job.text)
    r = _cli("validate", str(tmp_path / "job.yml"))
    assert r.returncode == 0 and "# note: visionsweep.pretrained: false: every model starts from random" in r.stdout


def test_run_says_where_the_weights_are_once_in_its_weights_line(tmp_path, small_mltable, mobilenet_weights, caplog):
    # each lookup (AutoMode and validate look the same file up several times) logs at DEBUG only: at the default
    # log_verbosity (info) the one line run prints is the summary from the plan
    import logging

    from scheduler.preflight import check_weights, weights_config, weights_lines
    from scheduler.spec import parse_job

    store = tmp_path / "store"
    store.mkdir()
    shutil.copyfile(mobilenet_weights, store / MOBILENET_FILE)
    job = parse_job(f"task: image_classification\ntarget_column_name: label\ntraining_data: {{path: {small_mltable}}}\n"
                    f"training_parameters: {{model_name: mobilenetv2}}\nvisionsweep: {{weights_store: {store}}}\n")
    with caplog.at_level(logging.DEBUG, logger="trainers.models.weights"):
        _, plan = check_weights(job, weights_config(job))
        _, plan = check_weights(job, weights_config(job))  # a second lookup of the same file
    said = [r for r in caplog.records if r.name.startswith("trainers.models.weights")]
    assert said and all(r.levelno == logging.DEBUG for r in said)  # looked up (at debug), never said at info
    assert weights_lines(plan) == [f"weights: mobilenetv2 from weights store ({store / MOBILENET_FILE}; "
                                   f"{plan['models']['mobilenetv2']['weights']})"]


# --- models built from published weights -------------------------------------------------------------------

def test_a_detector_starts_from_coco_weights_with_new_class_heads_and_frozen_batchnorm(tmp_path):
    import torchvision
    from torchvision.ops import FrozenBatchNorm2d

    from trainers.models.detectors import build_detector
    from trainers.package import load_package, save_package

    torch.manual_seed(0)
    coco = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    ckpt = tmp_path / "coco.pth"
    torch.save(coco.state_dict(), ckpt)  # the shapes of torchvision's COCO checkpoint
    cfg = _cfg(tmp_path, explicit={"retinanet_resnet50_fpn": str(ckpt)})
    h = hp.resolve_hyperparameters(hp.DETECTION, {"model_name": "retinanet_resnet50_fpn", "min_size": 64,
                                                  "max_size": 64}, {})
    init = initial_weights(h, hp.DETECTION, cfg)
    model = build_detector("retinanet_resnet50_fpn", 2, h, init)
    own, published = model.state_dict(), coco.state_dict()
    fresh = {k for k in own if k in published and own[k].shape == published[k].shape
             and not torch.equal(own[k], published[k])}
    assert not fresh  # every tensor of the same shape came from the checkpoint (the FPN's P6/P7 included)
    assert own["head.classification_head.cls_logits.weight"].shape[0] == 9 * 3  # anchors x (2 classes + background)
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)
    # the package records the architecture and its origin, and loads as trained
    pkg = save_package(tmp_path / "pkg", model=model, task=hp.DETECTION, classes=["a", "b"], hyperparameters=h,
                       metrics={}, architecture={"backbone_norm": "frozen_bn"}, initial_weights=init.provenance())
    loaded = load_package(pkg)
    assert isinstance(loaded.model.backbone.body.bn1, FrozenBatchNorm2d)
    assert loaded.training_config["initial_weights"]["source"] == "explicit"
    x = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        a, b = model.eval()(x)[0], loaded.model(x)[0]
    assert torch.equal(a["scores"], b["scores"])


def test_other_depths_start_from_the_imagenet_backbone_under_a_fresh_fpn(tmp_path):
    import torchvision

    from trainers.models.detectors import build_detector

    resnet = torchvision.models.resnet18()
    ckpt = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), ckpt)
    cfg = _cfg(tmp_path, explicit={"maskrcnn_resnet18_fpn": str(ckpt)})
    h = hp.resolve_hyperparameters(hp.SEGMENTATION, {"model_name": "maskrcnn_resnet18_fpn"}, {})
    init = initial_weights(h, hp.SEGMENTATION, cfg)
    assert init.target == "backbone"
    model = build_detector("maskrcnn_resnet18_fpn", 2, h, init, segmentation=True)
    assert torch.equal(model.backbone.body.layer3[0].conv1.weight, resnet.layer3[0].conv1.weight)
    assert torch.equal(model.backbone.body.bn1.running_var, resnet.bn1.running_var)


def test_a_timm_vit_starts_from_its_hub_file_and_takes_imagenet_normalised_inputs(tmp_path):
    import timm
    from safetensors.torch import save_file

    from trainers.models.classifiers import build_model
    from trainers.transforms import IMAGENET_MEAN, IMAGENET_STD

    e = entry("vits16r224", MC)
    torch.manual_seed(1)
    published = timm.create_model("vit_small_patch16_224", num_classes=1000)
    store = tmp_path / "store"
    (store / e.file).parent.mkdir(parents=True)
    save_file(published.state_dict(), str(store / e.file))
    # a store filled by `weights pull` records the hub's SHA-256 of each hub file
    (store / STORE_INDEX).write_text(json.dumps({"files": {e.file: {"sha256": _sha(store / e.file)}}}))
    init = initial_weights({"model_name": "vits16r224"}, MC, _cfg(tmp_path, store=str(store)))
    assert init.verified and init.source == "store"
    model = build_model("vits16r224", 3, 32, init).eval()
    ref = timm.create_model("vit_small_patch16_224", pretrained=True, num_classes=3, img_size=32,
                            pretrained_cfg_overlay={"file": str(store / e.file), "custom_load": False}).eval()
    pixels = torch.rand(2, 3, 32, 32)
    imagenet = (pixels - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():  # ours on ImageNet-normalised input = timm's on the (0.5, 0.5) normalisation it was made for
        assert torch.allclose(model.forward_features(imagenet), ref.forward_features((pixels - 0.5) / 0.5), atol=1e-4)
    # without a recorded hash a hub file cannot be checked, and is refused
    (store / STORE_INDEX).unlink()
    with pytest.raises(HashMismatch, match="cannot check vits16r224"):
        initial_weights({"model_name": "vits16r224"}, MC, _cfg(tmp_path / "fresh", store=str(store)))


# --- weights stores: pull and verify -------------------------------------------------------------------------

def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "visionsweep.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})})


def test_pull_fills_a_store_from_the_origin_and_verify_checks_it(tmp_path, origin, mobilenet_weights):
    store = tmp_path / "store"
    env = {"VISIONSWEEP_CACHE_DIR": str(tmp_path / "cache")}
    r = _cli("weights", "pull", "mobilenetv2", "--to", str(store), env=env)
    assert r.returncode == 0, r.stderr
    assert _sha(store / MOBILENET_FILE) == _sha(mobilenet_weights)
    index = json.loads((store / STORE_INDEX).read_text())["files"][MOBILENET_FILE]
    assert index["sha256"] == _sha(mobilenet_weights) and index["models"] == ["mobilenetv2"]
    ok = _cli("weights", "verify", str(store))
    assert ok.returncode == 0 and "1 ok, 0 mismatched" in ok.stdout
    data = bytearray((store / MOBILENET_FILE).read_bytes())
    data[5000] ^= 1
    (store / MOBILENET_FILE).write_bytes(bytes(data))
    bad = _cli("weights", "verify", str(store))
    assert bad.returncode == 2 and f"MISMATCH   {MOBILENET_FILE}" in bad.stdout
    assert f"do not match their published hash: {MOBILENET_FILE}" in bad.stderr
    # pulling again replaces the damaged copy
    again = _cli("weights", "pull", "mobilenetv2", "--to", str(store), env=env)
    assert again.returncode == 0 and _sha(store / MOBILENET_FILE) == _sha(mobilenet_weights)


def test_pull_to_a_bucket_and_verify_it(tmp_path, origin, moto_s3, mobilenet_weights):
    with moto_s3.env() as env:
        moto_s3.create("pulled")
        r = _cli("weights", "pull", "mobilenetv2", "--to", "s3://pulled/zoo",
                 env={**env, "VISIONSWEEP_CACHE_DIR": str(tmp_path / "cache")})
        assert r.returncode == 0, r.stderr
        ok = _cli("weights", "verify", "s3://pulled/zoo", env=env)
        assert ok.returncode == 0 and "1 ok, 0 mismatched" in ok.stdout, ok.stderr


def test_pull_into_a_store_that_already_holds_the_file_indexes_it(tmp_path, mobilenet_weights):
    """A store filled by hand (or copied without its index): pull keeps the file and writes it into the index."""
    from trainers.models.weights.manifest import entries_for
    from trainers.models.weights.store import pull

    store = tmp_path / "store"
    store.mkdir()
    shutil.copyfile(mobilenet_weights, store / MOBILENET_FILE)
    said: list[str] = []
    # no download: a pull that went to the origin would fail instead of reaching the internet
    r = pull(entries_for("mobilenetv2", MC), str(store), _cfg(tmp_path), echo=said.append)
    assert r["files"] == [MOBILENET_FILE] and said[0].startswith(f"kept   {MOBILENET_FILE}")
    doc = json.loads((store / STORE_INDEX).read_text())
    assert list(doc["files"]) == [MOBILENET_FILE]
    rec = doc["files"][MOBILENET_FILE]
    assert rec["sha256"] == _sha(mobilenet_weights) and rec["size"] == mobilenet_weights.stat().st_size
    assert rec["models"] == ["mobilenetv2"] and rec["origin"] == TV_ORIGIN + MOBILENET_FILE
    # again: the record is kept as it was, with when the file first came into the index
    doc["files"][MOBILENET_FILE]["pulled"] = "2020-01-01T00:00:00Z"
    (store / STORE_INDEX).write_text(json.dumps(doc))
    pull(entries_for("mobilenetv2", MC), str(store), _cfg(tmp_path), echo=said.append)
    again = json.loads((store / STORE_INDEX).read_text())["files"][MOBILENET_FILE]
    assert again == {**rec, "pulled": "2020-01-01T00:00:00Z"}


def test_weights_list_says_which_weights_are_on_this_machine_and_where(tmp_path, mobilenet_weights):
    store = tmp_path / "store"
    store.mkdir()
    shutil.copyfile(mobilenet_weights, store / MOBILENET_FILE)
    resnet18 = entry("resnet18", MC).file
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / resnet18).write_bytes(b"found by name: run checks the hash before use")
    env = {"TORCH_HOME": str(tmp_path / "torch"), "HF_HUB_CACHE": str(tmp_path / "hf"),
           "VISIONSWEEP_CACHE_DIR": str(tmp_path / "cache"), "VISIONSWEEP_WEIGHTS_STORE": ""}
    names = ("weights", "list", "--task", MC, "mobilenetv2", "resnet18", "resnet34")

    r = _cli(*names, "--store", str(store), "--json", env=env)
    assert r.returncode == 0, r.stderr
    rows = {row["model_name"]: row for row in json.loads(r.stdout)}
    assert rows["mobilenetv2"]["local"] == {"where": str(store / MOBILENET_FILE), "found_in": "weights store",
                                            "source": "store", "file": MOBILENET_FILE}
    assert rows["resnet18"]["local"]["where"] == str(hub / resnet18)
    assert rows["resnet18"]["local"]["found_in"] == "the torch hub cache"
    assert rows["resnet34"]["local"] is None

    # --local: only those, marked, each with where it is; the store from the environment this time
    r = _cli(*names, "--local", env={**env, "VISIONSWEEP_WEIGHTS_STORE": str(store)})
    assert r.returncode == 0, r.stderr
    assert "resnet34" not in r.stdout
    assert "mobilenetv2  [here]" in r.stdout and f"here   {store / MOBILENET_FILE}  (weights store)" in r.stdout
    assert f"here   {hub / resnet18}  (the torch hub cache)" in r.stdout
    assert "2 of 3 on this machine; looked in the weights store " + str(store) in r.stdout


# --- AutoMode ---------------------------------------------------------------------------------------------

def test_automode_considers_only_models_whose_weights_it_can_have_and_says_why():
    from scheduler import automode

    p = automode.plan(MC, 8, {}, has_gpu=False, available=lambda m: None if m == "mobilenetv2" else "nowhere")
    assert [m["model_name"] for m in p["models"]] == ["mobilenetv2"]
    why = {c["model_name"]: c for c in p["considered"]}
    assert not why["resnet18"]["considered"] and "no pretrained weights can be had: nowhere" in why["resnet18"]["why"]
    assert p["first_trial"]["config"] == {"model_name": "mobilenetv2", "optimizer": "adamw", "learning_rate": 3e-4}
    assert {sub["optimizer"].values[0] for sub in p["space"]} == {"adamw", "sgd"}  # one sub-space per recipe
    with pytest.raises(VisionsweepError, match="AutoMode found no candidate model"):
        automode.plan(MC, 8, {}, has_gpu=False, available=lambda m: "nowhere")


# --- whole jobs on a real local Ray --------------------------------------------------------------------------

FAST = """\
  number_of_epochs: 1
  training_batch_size: 16
  validation_batch_size: 32
  training_crop_size: 32
  validation_resize_size: 32
  validation_crop_size: 32
"""


@pytest.mark.ray
def test_four_concurrent_trials_fetch_the_weights_once_and_record_where_they_came_from(
        ray_session, tmp_path, origin, small_mltable, mobilenet_weights):
    from mlflow.tracking import MlflowClient

    from scheduler.controller import run_job
    from scheduler.spec import parse_job

    job = parse_job(f"""\
task: image_classification
target_column_name: label
training_data: {{path: {small_mltable}}}
limits: {{max_trials: 4, max_concurrent_trials: 4}}
training_parameters:
  model_name: mobilenetv2
{FAST}search_space:
  - learning_rate: {{type: choice, values: [0.0001, 0.0003, 0.001, 0.003]}}
sweep: {{sampling_algorithm: grid}}
visionsweep: {{cpus_per_trial: 0.5, cache: {{dir: {tmp_path / 'node-cache'}}}}}
""", source=tmp_path / "job.yml")
    lines: list[str] = []
    result = run_job(job, tmp_path / "run", echo=lines.append)
    assert len(result.rows) == 4 and all(r["status"] == "completed" for r in result.rows)
    # one download for the node, however many trials started together (the driver only asked whether it is there)
    assert origin.counts[("GET", f"/{MOBILENET_FILE}")] == 1
    assert origin.counts[("HEAD", f"/{MOBILENET_FILE}")] == 1
    assert any(ln.startswith(f"weights: mobilenetv2 from origin ({origin.url}{MOBILENET_FILE}") for ln in lines)
    sha = _sha(mobilenet_weights)
    for t in (tmp_path / "run" / "trials").iterdir():
        prov = json.loads((t / "initial_weights.json").read_text())
        assert prov["source"] in ("origin", "cache") and prov["sha256"] == sha and prov["verified"]
        assert all("initial_weights" not in json.loads(ln) for ln in (t / "metrics.jsonl").read_text().splitlines())
    # the package records its initial weights; the MLflow run of each trial carries them as params
    best = json.loads((tmp_path / "run" / "best" / "training_config.json").read_text())["initial_weights"]
    assert best["file"] == MOBILENET_FILE and best["sha256"] == sha and best["weights"].endswith("IMAGENET1K_V1")
    assert best["origin"] == TV_ORIGIN + MOBILENET_FILE  # the published origin, not the test's stand-in
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["pretrained"] is True and summary["initial_weights"]["mobilenetv2"].startswith("origin: ")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    tracking = json.loads((tmp_path / "run" / "tracking.json").read_text())
    for run_id in tracking["trials"].values():
        params = client.get_run(run_id).data.params
        assert params["initial_weights.sha256"] == sha and params["initial_weights.file"] == MOBILENET_FILE


@pytest.mark.ray
def test_an_unchanged_service_job_trains_from_the_torch_cache_with_no_visionsweep_key(
        ray_session, tmp_path, monkeypatch, small_mltable, mobilenet_weights):
    from scheduler.controller import run_job
    from scheduler.spec import parse_job

    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    shutil.copyfile(mobilenet_weights, hub / MOBILENET_FILE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    text = f"""\
$schema: https://azuremlschemas.azureedge.net/latest/autoMLJob.schema.json
type: automl
task: image_classification
target_column_name: label
training_data: {{path: {small_mltable}, type: mltable}}
limits: {{max_trials: 1}}
training_parameters:
  model_name: mobilenetv2
{FAST}"""
    assert "visionsweep" not in text
    result = run_job(parse_job(text, source=tmp_path / "job.yml"), tmp_path / "run", echo=lambda s: None)
    prov = json.loads((tmp_path / "run" / "best" / "training_config.json").read_text())["initial_weights"]
    assert prov["source"] == "cache" and prov["location"] == str(hub / MOBILENET_FILE) and prov["verified"]
    assert result.best_metric is not None
    plan = json.loads((tmp_path / "run" / "weights.json").read_text())
    assert plan["models"]["mobilenetv2"]["detail"] == "the torch hub cache"


# --- fine-tuning defaults where the spec leaves them open (§13 A13) ---------------------------------------------

def test_hugging_face_models_fine_tune_with_adamw_at_the_model_cards_rate():
    d = hp.task_model_defaults(MC, "google/vit-base-patch16-224")
    assert (d["optimizer"], d["learning_rate"], d["training_batch_size"]) == ("adamw", 5e-5, 32)
    # the built-in models keep §6.2's defaults
    assert (hp.task_model_defaults(MC, "vitb16r224")["optimizer"],
            hp.task_model_defaults(MC, "resnet50")["learning_rate"]) == ("sgd", 0.01)


@pytest.mark.parametrize("name,kind", [("atss_r50_fpn_1x_coco", "sgd"),
                                       ("mmd-3x-deformable-detr_refine_twostage_r50_16xb2-50e_coco", "adamw")])
def test_mmdetection_models_start_from_their_configs_optimiser(name, kind):
    pytest.importorskip("mmdet")
    from mmengine.config import Config

    from trainers.models.openmmlab import config_path

    cfg = Config.fromfile(str(config_path(name)))
    opt, base = cfg.optim_wrapper.optimizer, cfg.get("auto_scale_lr", {}).get("base_batch_size", 16)
    d = hp.task_model_defaults(hp.DETECTION, name)
    assert d["optimizer"] == kind and d["weight_decay"] == opt["weight_decay"]
    assert d["learning_rate"] == pytest.approx(opt["lr"] * d["training_batch_size"] / base)
