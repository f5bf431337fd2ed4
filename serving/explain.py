"""Explanations of classification predictions (SPEC §10): XRAI, integrated gradients, guided Grad-CAM,
guided backprop, from well-kept libraries (``saliency`` for XRAI, ``captum`` for the others).

Attributions are computed for the predicted class (multi-class) or for every label whose probability
is at least ``confidence_score_threshold_multilabel`` (multi-label), on the center-cropped input of
side ``validation_crop_size``; each is returned as ``[3, crop, crop]``. The visualisation is the 2 x 2
grid of §10.6 as a base64 PNG: the cropped input; the attribution heat-map on colorcet's ``bgyw``
scale (white = most important); the heat-map blended over the input; the input showing only its top
30 % pixels by attribution.
"""

from __future__ import annotations

import base64
import copy
import io
import threading
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from trainers.errors import VisionsweepError
from trainers.transforms import IMAGENET_MEAN, IMAGENET_STD

TOP_FRACTION = 0.30


def _last_conv(model: nn.Module) -> nn.Module:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise VisionsweepError("guided_gradcam needs a convolutional layer, and this model has none")
    return convs[-1]


def _attribute(model: nn.Module, x: torch.Tensor, target: int, p: dict[str, Any]) -> np.ndarray:
    """Attributions ``[3, H, W]`` of ``target`` for a normalised input ``x`` of shape ``[1, 3, H, W]``."""
    algo = p["xai_algorithm"]
    if algo == "xrai":
        import saliency.core as saliency

        def call_model(images, call_model_args=None, expected_keys=None):
            t = torch.tensor(np.transpose(images, (0, 3, 1, 2)), dtype=torch.float32, device=x.device,
                             requires_grad=True)
            out = model(t)[:, call_model_args["class_idx"]]
            grads = torch.autograd.grad(out.sum(), t)[0]
            return {saliency.base.INPUT_OUTPUT_GRADIENTS: np.transpose(grads.detach().cpu().numpy(), (0, 2, 3, 1))}

        params = saliency.XRAIParameters(steps=p["n_steps"], algorithm="fast" if p["xrai_fast"] else "full")
        img = np.transpose(x[0].detach().cpu().numpy(), (1, 2, 0))
        mask = saliency.XRAI().GetMask(img, call_model, call_model_args={"class_idx": target},
                                       extra_parameters=params, batch_size=8)
        return np.repeat(mask[None, :, :], 3, axis=0).astype(np.float32)
    from captum import attr

    if algo == "integrated_gradients":
        method = "riemann_middle" if p["approximation_method"] == "riemann_middle" else "gausslegendre"
        a = attr.IntegratedGradients(model).attribute(x, target=target, n_steps=p["n_steps"], method=method)
    elif algo == "guided_gradcam":
        a = attr.GuidedGradCam(model, _last_conv(model)).attribute(x, target=target)
    elif algo == "guided_backprop":
        a = attr.GuidedBackprop(model).attribute(x, target=target)
    else:  # pragma: no cover - the request schema allows only the four names
        raise VisionsweepError(f"unknown xai_algorithm {algo!r}")
    return a[0].detach().float().cpu().numpy()


def _bgyw(values: np.ndarray) -> np.ndarray:
    import colorcet

    lut = np.array([[int(h[i:i + 2], 16) for i in (1, 3, 5)] for h in colorcet.bgyw], dtype=np.uint8)
    idx = np.clip((values * (len(lut) - 1)).round().astype(int), 0, len(lut) - 1)
    return lut[idx]


def visualize(image: np.ndarray, attributions: np.ndarray) -> str:
    """The 2 x 2 grid of §10.6 as a base64 PNG; ``image`` is ``[H, W, 3]`` uint8."""
    heat = np.abs(attributions).sum(0)
    heat = (heat - heat.min()) / (np.ptp(heat) or 1.0)
    colour = _bgyw(heat)
    blended = (0.5 * image + 0.5 * colour).astype(np.uint8)
    top = heat >= np.quantile(heat, 1 - TOP_FRACTION)
    masked = (image * top[:, :, None]).astype(np.uint8)
    grid = np.concatenate([np.concatenate([image, colour], 1), np.concatenate([blended, masked], 1)], 0)
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class Explainer:
    """Explanations of a ``Predictor``'s model that never disturb its predictions.

    captum's guided backprop and guided Grad-CAM install hooks on the model for the length of an
    attribution. On the instance that predictions use from other threads, a prediction running meanwhile
    runs through them and fails (its ``no_grad`` tensors cannot take gradient hooks), and Grad-CAM may
    record that prediction's activations instead of its own. So explanations run on a deep copy of the
    model, made at the first explanation (the model's memory once more, only on deployments that explain),
    one at a time (two explanations' hooks on one copy would disturb each other just the same).

    Measured against the alternative, one lock around predictions and explanations on the shared model:
    ResNet-18 at 224 px on CPU (2 shared cores, one torch thread per Python thread), one image predicted 60
    times back to back while guided Grad-CAM, integrated gradients (16 steps) and guided backprop
    explanations ran back to back in another thread, two rounds each:

    ==========================  ==================  ==================  ==========================
    prediction latency          p50                 p95                 explanations
    ==========================  ==================  ==================  ==========================
    alone                       51 / 55 ms          57 / 75 ms          -
    one lock, shared model      373 / 375 ms        2123 / 2442 ms      0.83 s each
    copy for explanations       115 / 124 ms        159 / 170 ms        1.3 / 1.5 s each
    ==========================  ==================  ==================  ==========================

    With the lock a prediction waits for whole explanations (seconds for XRAI); with the copy it only
    shares the CPU with them. The copy's price is the model's memory once more (45 MB for ResNet-18).
    """

    def __init__(self, predictor):
        self.predictor = predictor
        self._model = None
        self._lock = threading.Lock()

    def explain(self, image: Image.Image, p: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self._model is None:
                self._model = copy.deepcopy(self.predictor.pkg.model)
            return explain_image(self.predictor, image, p, self._model)


def explain_image(predictor, image: Image.Image, p: dict[str, Any], model: nn.Module | None = None) -> dict[str, Any]:
    """The prediction for one image plus the requested visualisations / attributions, attributed on ``model``
    (default: the predictor's own, which only a caller that predicts nothing meanwhile may use; servers use
    :class:`Explainer`)."""
    if not predictor.classification:
        raise VisionsweepError(f"explanations (model_explainability) are available for image classification only; "
                               f"this deployment serves {predictor.pkg.task}")
    pred = predictor.predict_images([image])[0]
    x = predictor.transform(image).unsqueeze(0).to(predictor.device)
    probs = pred["probs"]
    if predictor.task.multi:
        targets = [i for i, v in enumerate(probs) if v >= p["confidence_score_threshold_multilabel"]]
    else:
        targets = [int(np.argmax(probs))]
    mean, std = np.array(IMAGENET_MEAN)[:, None, None], np.array(IMAGENET_STD)[:, None, None]
    shown = np.transpose(((x[0].detach().cpu().numpy() * std + mean).clip(0, 1) * 255).astype(np.uint8), (1, 2, 0))
    model = predictor.pkg.model if model is None else model
    attrs = [_attribute(model, x.detach().clone(), t, p) for t in targets]
    out = dict(pred)
    if p.get("visualizations"):
        vis = [visualize(shown, a) for a in attrs]
        out["visualizations"] = vis if predictor.task.multi else vis[0]
    if p.get("attributions"):
        lists = [a.tolist() for a in attrs]
        out["attributions"] = lists if predictor.task.multi else lists[0]
    return out
