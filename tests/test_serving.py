"""Serving on Ray Serve over real HTTP on localhost (SPEC §9.3, §10, §15)."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from serving import endpoints
from serving.specs import DeploymentSpec, EndpointSpec
from trainers.errors import SpecError

pytestmark = pytest.mark.ray
SAMPLE = Path(__file__).resolve().parent.parent / "trainers" / "sample_data" / "fashion_mnist"
IMAGE = (SAMPLE / "images" / "test_0000.png").read_bytes()
# Probes that notice a broken deployment within a second, yet tolerate a slow check under load.
FAST = {"initial_delay": 0, "period": 0.2, "timeout": 10, "failure_threshold": 3, "success_threshold": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """A real model package: ResNet-18 trained one epoch on the bundled sample at 32x32."""
    from trainers.data import prepare_data
    from trainers.hyperparameters import resolve_hyperparameters
    from trainers.engine import train

    data = prepare_data("image_classification", "label", str(SAMPLE / "train"), None, 0.2, 0)
    data.train, data.valid = data.train[:64], data.valid[:32]
    h = resolve_hyperparameters("image_classification", {
        "model_name": "resnet18", "training_crop_size": 32, "validation_resize_size": 32,
        "validation_crop_size": 32, "number_of_epochs": 1, "training_batch_size": 16}, {})
    out = tmp_path_factory.mktemp("pkg") / "best"
    saves = []
    train(h, data, lambda m, save: saves.append(save) if save else None, device="cpu")
    saves[-1](str(out))
    return out


@pytest.fixture(scope="module")
def serve_url(ray_session, tmp_path_factory):
    import os

    from ray import serve

    os.environ["VISIONSWEEP_HOME"] = str(tmp_path_factory.mktemp("home"))
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(autouse=True)
def _free_cluster(request):
    """Delete each test's endpoints afterwards: the 2-CPU test cluster holds only a few at a time."""
    yield
    if "serve_url" not in request.fixturenames:
        return
    for f in (endpoints.home() / "endpoints").glob("*.json"):
        if f.stem != "ep-xai":  # shared by the parametrised explanation tests
            endpoints.delete_endpoint(f.stem)


def post(url, body: bytes, key: str | None = None, ctype="application/json", headers=None):
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": ctype, **(headers or {})})
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), dict(e.headers)


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def body(*images: bytes, mime_breaks=False) -> bytes:
    enc = base64.encodebytes if mime_breaks else base64.b64encode
    return json.dumps({"input_data": {"columns": ["image"], "data": [enc(i).decode() for i in images]}}).encode()


def make_endpoint(name, package, deployments=("blue", "green"), broken=()):
    state = endpoints.create_endpoint(EndpointSpec(name=name))
    for d in deployments:
        model = "/nonexistent/package" if d in broken else str(package)
        endpoints.create_deployment(DeploymentSpec(name=d, endpoint_name=name, model=model, cpus_per_instance=0.25,
                                                   readiness_probe=FAST, batching={"max_batch_size": 4}))
    return endpoints.load_state(name)["keys"] if state else None


def test_a_deployment_files_model_path_is_relative_to_the_file(tmp_path):
    from serving.specs import load_deployment

    (tmp_path / "deploy").mkdir()
    for model, expected in [("../runs/best", str(tmp_path / "runs" / "best")),
                            ("s3://bucket/best", "s3://bucket/best"),
                            ("azureml:fashion:2", "azureml:fashion:2")]:
        f = tmp_path / "deploy" / "blue.yml"
        f.write_text(f"name: blue\nendpoint_name: ep\nmodel: {model}\n")
        assert load_deployment(f).model == expected


def test_traffic_split_auth_and_response_schema(serve_url, package):
    keys = make_endpoint("ep-split", package)
    url = f"{serve_url}/ep-split/score"
    # a new deployment starts at 0 %: no traffic yet
    assert endpoints.load_state("ep-split")["traffic"] == {"blue": 0, "green": 0}
    assert post(url, body(IMAGE), keys["primary"])[0] == 503
    endpoints.set_traffic("ep-split", {"blue": 90, "green": 10})

    # auth: 401 without a valid key, 200 with either key
    assert post(url, body(IMAGE))[0] == 401
    assert post(url, body(IMAGE), "not-the-key")[0] == 401
    status, resp, _ = post(url, body(IMAGE, IMAGE, mime_breaks=True), keys["secondary"])
    assert status == 200
    # §15: one object per image, probs aligned with labels
    labels = json.loads((package / "labels.json").read_text())
    assert len(resp) == 2 and all(r["labels"] == labels and len(r["probs"]) == len(labels) for r in resp)
    assert abs(sum(resp[0]["probs"]) - 1) < 1e-4

    # 90/10 over 200 requests: green gets 10 % within 3 standard deviations (sd = sqrt(200 * 0.1 * 0.9) = 4.24)
    hits = {"blue": 0, "green": 0}
    for _ in range(200):
        status, _, headers = post(url, body(IMAGE), keys["primary"])
        assert status == 200
        hits[headers["azureml-model-deployment"]] += 1
    assert 20 - 3 * 4.24 <= hits["green"] <= 20 + 3 * 4.24, hits

    # an explicit deployment header picks that deployment
    assert post(url, body(IMAGE), keys["primary"], headers={"azureml-model-deployment": "green"})[2][
        "azureml-model-deployment"] == "green"

    # old key rejected after regeneration, the new one accepted
    endpoints.regenerate_keys("ep-split", "primary")
    new = endpoints.load_state("ep-split")["keys"]["primary"]
    assert post(url, body(IMAGE), keys["primary"])[0] == 401
    assert post(url, body(IMAGE), new)[0] == 200
    # a plain POST of image bytes works too
    assert post(url, IMAGE, new, ctype="image/png")[0] == 200
    # traffic rules: weights sum to at most 100, deployments must exist
    with pytest.raises(SpecError, match="sum to 110"):
        endpoints.set_traffic("ep-split", {"blue": 60, "green": 50})
    with pytest.raises(SpecError, match="no deployment named 'red'"):
        endpoints.set_traffic("ep-split", {"red": 10})


def test_bad_requests_get_4xx_and_the_server_stays_up(serve_url, package):
    keys = make_endpoint("ep-bad", package, deployments=("blue",))
    endpoints.set_traffic("ep-bad", {"blue": 100})
    url, key = f"{serve_url}/ep-bad/score", keys["primary"]
    cases = [
        (b"{not json", "application/json", 400, "malformed JSON"),
        (json.dumps({"data": []}).encode(), "application/json", 400, "input_data"),
        (json.dumps({"input_data": {"data": ["!!not-base64!!"]}}).encode(), "application/json", 400, "base64"),
        (body(b"this is not an image"), "application/json", 400, "not a decodable image"),
        (body(*[IMAGE] * 65), "application/json", 413, "at most 64"),
        (b"hello", "text/plain", 415, "unsupported content type"),
    ]
    for data, ctype, status, message in cases:
        got, resp, _ = post(url, data, key, ctype=ctype)
        assert got == status and message in resp["error"], (message, got, resp)
    assert get(f"{serve_url}/ep-bad/health/live")[0] == 200
    assert post(url, body(IMAGE), key)[0] == 200


def test_a_deployment_that_cannot_load_is_not_ready_and_gets_no_traffic(serve_url, package):
    keys = make_endpoint("ep-ready", package, broken=("green",))
    endpoints.set_traffic("ep-ready", {"green": 100})
    status, state = get(f"{serve_url}/ep-ready/health/ready")
    assert status == 503 and state["deployments"]["green"]["ready"] is False
    assert "not a model package" in state["deployments"]["green"]["reason"]
    assert post(f"{serve_url}/ep-ready/score", body(IMAGE), keys["primary"])[0] == 503
    # with half the traffic on the healthy deployment, every request goes there
    endpoints.set_traffic("ep-ready", {"blue": 50, "green": 50})
    assert get(f"{serve_url}/ep-ready/health/ready")[0] == 200
    for _ in range(20):
        status, _, headers = post(f"{serve_url}/ep-ready/score", body(IMAGE), keys["primary"])
        assert status == 200 and headers["azureml-model-deployment"] == "blue"


def test_weight_change_under_load_drops_nothing_and_mirror_gets_copies(serve_url, package):
    from ray import serve

    keys = make_endpoint("ep-load", package)
    endpoints.set_traffic("ep-load", {"blue": 100})
    url, key = f"{serve_url}/ep-load/score", keys["primary"]
    results, stop = [], threading.Event()

    def load():
        while not stop.is_set() and len(results) < 2000:
            status, resp, headers = post(url, body(IMAGE), key)
            results.append((status, headers.get("azureml-model-deployment") or resp.get("error")))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    endpoints.set_traffic("ep-load", {"blue": 50, "green": 50})
    time.sleep(2)
    endpoints.set_traffic("ep-load", {"blue": 0, "green": 100})
    time.sleep(2)
    # adding a deployment rolls the router over (its set of deployments changed): still nothing dropped
    endpoints.create_deployment(DeploymentSpec(name="red", endpoint_name="ep-load", model=str(package),
                                               cpus_per_instance=0.25, readiness_probe=FAST))
    added_at = len(results)
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join()
    failed = [(i, s, d) for i, (s, d) in enumerate(results) if s != 200]
    assert len(results) > 20 and not failed, (failed[:5], len(failed), len(results))
    assert len(results) > added_at  # requests were answered after the new deployment came up
    assert results[-1][1] == "green" and {"blue", "green"} <= {d for _, d in results}

    # mirror: blue answers everything, green gets a copy of every request
    endpoints.set_traffic("ep-load", {"blue": 100, "green": 0}, mirror={"green": 100})
    green = serve.get_deployment_handle("ep-load-green", app_name="ep-load")
    before = green.stats.remote().result()["predicted"]
    for _ in range(10):
        status, _, headers = post(url, body(IMAGE), key)
        assert status == 200 and headers["azureml-model-deployment"] == "blue"
    deadline = time.time() + 10
    while green.stats.remote().result()["predicted"] < before + 10 and time.time() < deadline:
        time.sleep(0.2)
    assert green.stats.remote().result()["predicted"] == before + 10


def test_response_bodies_of_all_four_tasks(serve_url, package, trained_box_packages, tmp_path, monkeypatch):
    """§15: one object per image, in order; probs/labels for both classification tasks, normalised boxes for
    detection, plus polygons (and mask images with ``export_as_image``) for instance segmentation. The
    multi-class deployment's model is a registry reference (``azureml:<name>@latest``), pinned at creation.
    The detection and segmentation deployments serve packages trained by the engine; the detector answers
    with small-object tiling (``tile_grid_size``, §6.5) set as a deployment inference setting."""
    import torch
    from PIL import Image

    from tests.test_registry import register
    from trainers.hyperparameters import resolve_hyperparameters
    from trainers.models import build_model
    from trainers.package import save_package

    torch.manual_seed(0)
    h = resolve_hyperparameters("image_classification_multilabel", {
        "model_name": "resnet18", "validation_resize_size": 32, "validation_crop_size": 32}, {})
    multilabel = save_package(tmp_path / "ml", model=build_model("resnet18", 3, 32), classes=["a", "b", "c"],
                              task="image_classification_multilabel", hyperparameters=h, metrics={})
    registry = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register(registry, package, "fashion")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry)
    packages = {"mc": ("azureml:fashion@latest", {}), "ml": (multilabel, {}),
                "od": (trained_box_packages["image_object_detection"],
                       {"box_score_thresh": 0.0, "box_detections_per_img": 5, "tile_grid_size": "(2, 2)"}),
                "is": (trained_box_packages["image_instance_segmentation"],
                       {"box_score_thresh": 0.0, "box_detections_per_img": 5, "export_as_image": True,
                        "image_type": "PNG"})}
    endpoints.create_endpoint(EndpointSpec(name="ep-tasks"))
    for name, (pkg, settings) in packages.items():
        endpoints.create_deployment(DeploymentSpec(name=name, endpoint_name="ep-tasks", model=str(pkg),
                                                   cpus_per_instance=0.25, readiness_probe=FAST,
                                                   inference_settings=settings))
    state = endpoints.load_state("ep-tasks")
    assert state["deployments"]["mc"]["model"] == "models:/fashion/1"
    assert state["deployments"]["mc"]["model_reference"] == "azureml:fashion@latest"
    key = state["keys"]["primary"]
    url = f"{serve_url}/ep-tasks/score"
    other = (SAMPLE / "images" / "test_0001.png").read_bytes()
    width, height = Image.open(io.BytesIO(IMAGE)).size

    def score(deployment, *images):
        status, resp, headers = post(url, body(*images), key, headers={"azureml-model-deployment": deployment})
        assert status == 200, resp
        assert isinstance(resp, list) and len(resp) == len(images)
        return resp

    mc = score("mc", IMAGE, other)
    for r in mc:
        assert set(r) == {"probs", "labels"} and len(r["probs"]) == len(r["labels"]) == 10
        assert sum(r["probs"]) == pytest.approx(1, abs=1e-4)
    assert mc[0] != mc[1]  # in input order, per image
    (ml,) = score("ml", IMAGE)
    assert set(ml) == {"probs", "labels"} and ml["labels"] == ["a", "b", "c"]
    assert all(0 <= p <= 1 for p in ml["probs"]) and sum(ml["probs"]) != pytest.approx(1, abs=1e-3)

    for name in ("od", "is"):
        (r,) = score(name, IMAGE)
        assert set(r) == {"boxes"} and 1 <= len(r["boxes"]) <= 5
        for b in r["boxes"]:
            keys = {"box", "label", "score"} | ({"polygon", "mask"} if name == "is" else set())
            assert set(b) == keys, b
            c = b["box"]
            assert set(c) == {"topX", "topY", "bottomX", "bottomY"}
            assert 0 <= c["topX"] <= c["bottomX"] <= 1 and 0 <= c["topY"] <= c["bottomY"] <= 1
            assert b["label"] in ("disc", "square") and 0 <= b["score"] <= 1
            if name == "is":
                assert all(len(part) % 2 == 0 and len(part) >= 6 and all(0 <= v <= 1 for v in part)
                           for part in b["polygon"])
                mask = Image.open(io.BytesIO(base64.b64decode(b["mask"])))
                assert mask.format == "PNG" and mask.size == (width, height)
    # request_settings.request_timeout_ms is the deployment's answer deadline: 408 past it, and the endpoint goes on
    endpoints.create_deployment(DeploymentSpec(name="slow", endpoint_name="ep-tasks", model=str(multilabel),
                                               cpus_per_instance=0.25, readiness_probe=FAST,
                                               request_settings={"request_timeout_ms": 1}))
    status, resp, _ = post(url, body(IMAGE), key, headers={"azureml-model-deployment": "slow"})
    assert status == 408 and "request_timeout_ms" in resp["error"]
    assert score("ml", IMAGE)[0] == ml
    # explanations are a classification feature: a clear 400 from a detection deployment
    item = json.dumps({"image_base64": base64.b64encode(IMAGE).decode(), "model_explainability": True})
    status, resp, _ = post(url, json.dumps({"input_data": {"columns": ["image"], "data": [item]}}).encode(), key,
                           headers={"azureml-model-deployment": "od"})
    assert status == 400 and "classification only" in resp["error"]


@pytest.mark.parametrize("algorithm", ["xrai", "integrated_gradients", "guided_gradcam", "guided_backprop"])
def test_explanations_over_http(serve_url, package, algorithm):
    from PIL import Image

    if "ep-xai" not in {p.stem for p in (endpoints.home() / "endpoints").glob("*.json")}:
        make_endpoint("ep-xai", package, deployments=("blue",))
        endpoints.set_traffic("ep-xai", {"blue": 100})
    key = endpoints.load_state("ep-xai")["keys"]["primary"]
    item = json.dumps({"image_base64": base64.encodebytes(IMAGE).decode(), "model_explainability": True,
                       "xai_parameters": {"xai_algorithm": algorithm, "n_steps": 8, "xrai_fast": True,
                                          "visualizations": True, "attributions": True}})
    data = json.dumps({"input_data": {"columns": ["image"], "data": [item]}}).encode()
    status, resp, _ = post(f"{serve_url}/ep-xai/score", data, key)
    assert status == 200, resp
    (r,) = resp
    # multi-class: one attribution [3, crop, crop] and one 2 x 2 grid image of the crop
    assert len(r["attributions"]) == 3 and len(r["attributions"][0]) == 32 and len(r["attributions"][0][0]) == 32
    grid = Image.open(io.BytesIO(base64.b64decode(r["visualizations"])))
    assert grid.size == (64, 64)
    assert len(r["probs"]) == len(r["labels"])
