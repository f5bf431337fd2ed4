"""Deployments with ``runtime: onnx | onnx-int8`` (serving.onnx_runtime): the same JSON as the PyTorch runtime over
real HTTP on Ray Serve, behind the same key and traffic split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from serving import endpoints
from serving.specs import DeploymentSpec, EndpointSpec, load_deployment
from tests.conftest import make_detection_package
from tests.test_serving import FAST, IMAGE, SAMPLE, _free_cluster, body, package, post, serve_port, serve_url, wait_for  # noqa: F401
from trainers.errors import SpecError, VisionsweepError

OTHER = (SAMPLE / "images" / "test_0001.png").read_bytes()


def deploy(endpoint: str, name: str, model: Path, runtime: str, update: bool = False) -> None:
    endpoints.create_deployment(DeploymentSpec(name=name, endpoint_name=endpoint, model=str(model), runtime=runtime,
                                               cpus_per_instance=0.25, readiness_probe=FAST,
                                               batching={"max_batch_size": 4}), update=update)


def same_json(a: list[dict], b: list[dict], tol: float = 1e-4) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y) == {"probs", "labels"} and x["labels"] == y["labels"]
        assert max(abs(p - q) for p, q in zip(x["probs"], y["probs"])) < tol, (x, y)


@pytest.mark.ray
def test_an_onnx_deployment_answers_the_pytorch_json_behind_the_same_key(serve_url, package, tmp_path):  # noqa: F811
    """blue runs the package in PyTorch; green (ONNX graph exported at replica start, normalised input) and red (the
    package's own model.onnx, normalisation in the graph) run onnxruntime: the same labels and probabilities
    (within 1e-4) for the same images, the same key, the traffic split between them."""
    pkg = tmp_path / "best"
    shutil.copytree(package, pkg)
    endpoints.create_endpoint(EndpointSpec(name="ep-onnx"))
    deploy("ep-onnx", "blue", pkg, "pytorch")
    deploy("ep-onnx", "green", pkg, "onnx")  # no model.onnx in the package: the replica exports one
    assert not (pkg / "model.onnx").exists()
    from trainers.package.onnx import export_onnx

    export_onnx(str(pkg), normalization=True)  # PACKAGE/model.onnx, taking RGB in [0, 1]
    deploy("ep-onnx", "red", pkg, "onnx")
    state = endpoints.set_traffic("ep-onnx", {"blue": 34, "green": 33, "red": 33})
    key, url = state["keys"]["primary"], f"{serve_url}/ep-onnx/score"

    answers = {}
    for name in ("blue", "green", "red"):
        status, resp, headers = post(url, body(IMAGE, OTHER), key, headers={"azureml-model-deployment": name})
        assert status == 200 and headers["azureml-model-deployment"] == name, resp
        answers[name] = resp
    labels = json.loads((pkg / "labels.json").read_text())
    assert answers["blue"][0]["labels"] == labels
    same_json(answers["green"], answers["blue"])
    same_json(answers["red"], answers["blue"])
    # the same auth: no key, a wrong key are refused by the ONNX deployment as by the PyTorch one
    for k in (None, "not-the-key"):
        assert post(url, body(IMAGE), k, headers={"azureml-model-deployment": "green"})[0] == 401
    # the traffic split reaches every runtime, with the secondary key too
    seen = set()
    for _ in range(60):
        status, resp, headers = post(url, body(IMAGE), state["keys"]["secondary"])
        assert status == 200
        seen.add(headers["azureml-model-deployment"])
        same_json(resp, answers["blue"][:1])
    assert seen == {"blue", "green", "red"}
    # deployment show records the runtime
    assert [endpoints.deployment_show("ep-onnx", n)["runtime"] for n in ("blue", "green", "red")] == \
        ["pytorch", "onnx", "onnx"]


@pytest.mark.ray
def test_an_int8_deployment_names_the_export_command_then_serves_the_exported_graph(serve_port, package,  # noqa: F811
                                                                                     tmp_path):
    """Without PACKAGE/model.int8.onnx the deployment runs but is not ready, and says which command writes the
    graph; after that command, ``deployment update`` with the same file starts a replica that serves it."""
    from trainers.package.int8 import export_int8

    pkg = tmp_path / "best"
    shutil.copytree(package, pkg)
    endpoints.create_endpoint(EndpointSpec(name="ep-int8"))
    deploy("ep-int8", "blue", pkg, "onnx-int8")
    key = endpoints.set_traffic("ep-int8", {"blue": 100})["keys"]["primary"]
    shown = endpoints.deployment_show("ep-int8", "blue")
    assert shown["runtime"] == "onnx-int8" and shown["ready"] is False, shown
    assert f"`visionsweep export {pkg} --int8`" in shown["reason"], shown
    assert post(f"{serve_port}/ep-int8/score", body(IMAGE), key)[0] == 503

    calibration = sorted((SAMPLE / "images").glob("*.png"))[:8]
    export_int8(str(pkg), calibration_images=calibration, keep_below_tolerance=True)  # a 1-epoch model
    deploy("ep-int8", "blue", pkg, "onnx-int8", update=True)
    wait_for(lambda: endpoints.deployment_show("ep-int8", "blue")["ready"], "the INT8 replica to be ready", 60)
    status, resp, _ = post(f"{serve_port}/ep-int8/score", body(IMAGE, OTHER), key)
    assert status == 200, resp
    from serving.predictor import Predictor

    # INT8 is an approximation: the same labels, probabilities that sum to 1 and stay near PyTorch's
    same_json(resp, Predictor(str(pkg), "cpu").predict_images([IMAGE, OTHER]), tol=0.1)


def test_the_runtime_setting_is_checked_and_names_the_allowed_values(tmp_path):
    f = tmp_path / "blue.yml"
    f.write_text("name: blue\nendpoint_name: ep\nmodel: best\nruntime: tensorrt\n")
    with pytest.raises(SpecError, match=r"blue\.yml: runtime: Input should be 'pytorch', 'onnx' or 'onnx-int8', "
                                        r"but got 'tensorrt'"):
        load_deployment(f)
    f.write_text("name: blue\nendpoint_name: ep\nmodel: best\n")
    assert load_deployment(f).runtime == "pytorch"  # the default stays PyTorch


def test_the_graph_follows_the_deployments_crop_and_detectors_are_refused(package, tmp_path):  # noqa: F811
    """The package's own model.onnx where its input is the deployment's crop; a fresh export where an inference
    setting changes the crop (the graph's input size is fixed); a detector is refused with the reason."""
    from serving.onnx_runtime import OnnxPredictor
    from serving.predictor import Predictor
    from trainers.package.onnx import export_onnx

    pkg = tmp_path / "best"
    shutil.copytree(package, pkg)
    export_onnx(str(pkg))
    own = OnnxPredictor(str(pkg), "onnx", device="cpu")
    assert own.graph_path == pkg / "model.onnx" and not own.in_graph
    settings = {"validation_resize_size": 40, "validation_crop_size": 36}
    other = OnnxPredictor(str(pkg), "onnx", device="cpu", settings=settings)
    assert other.graph_path != pkg / "model.onnx" and other.session.get_inputs()[0].shape[-2:] == [36, 36]
    same_json(other.predict_images([IMAGE]), Predictor(str(pkg), "cpu", settings).predict_images([IMAGE]))
    assert not other.graph_path.parent.exists()  # the replica-local export is gone once the session has read it

    detector = make_detection_package(tmp_path, "fasterrcnn_resnet18_fpn", "image_object_detection")
    with pytest.raises(VisionsweepError, match="runtime onnx serves image classification packages only; this package "
                                               "is image_object_detection"):
        OnnxPredictor(str(detector), "onnx", device="cpu")
