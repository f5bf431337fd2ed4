"""Hugging Face ``transformers`` image classifiers as classification models (SPEC §5.3).

A model is named by its hub id (``microsoft/beit-base-patch16-224``), by the curated registry's spelling
(``microsoft-beit-base-patch16-224-pt22k-ft22k``: ``/`` written as ``-``, normalised here), or by a local
folder written with ``save_pretrained``. Its config and weights are a folder that ``trainers.models.weights`` finds
(``visionsweep.pretrained_weights``, the folder the name points at, a weights store, the Hugging Face cache,
then the hub where there is internet; ``HF_HUB_OFFLINE`` is honoured). The head is re-sized to the job's
classes; with ``visionsweep.pretrained: false`` only the folder's config is used and the weights are random.

The trainer feeds every classifier the same ImageNet-normalised NCHW batch (``trainers.transforms``), so
the wrapper re-normalises it to the statistics of the model's own image processor with one fixed affine
map; the augmentations, serving, explanations and ONNX export stay those of every other classifier.
A trained model is saved with its ``config.json`` (``hf_config.json`` in the package) so that a package
loads with no hub and no cache.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainers.data.urls import is_url
from trainers.errors import VisionsweepError
from trainers.models.loading import load_pretrained
from trainers.models.names import hub_id
from trainers.models.weights.initial import InitialWeights
from trainers.transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

INSTALL = "pip install 'visionsweep[huggingface]'"
CONFIG_FILE = "hf_config.json"  # the model's transformers config, inside a model package

def require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise VisionsweepError(f"Hugging Face models need the transformers library: {INSTALL}") from None


class HFImageClassifier(nn.Module):
    """``AutoModelForImageClassification`` behind the zoo's interface: NCHW ImageNet-normalised -> logits."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.model = model
        # x_model = (x_imagenet * imagenet_std + imagenet_mean - mean) / std, per channel
        scale = torch.tensor(IMAGENET_STD) / torch.tensor(std)
        shift = (torch.tensor(IMAGENET_MEAN) - torch.tensor(mean)) / torch.tensor(std)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)
        self.mean, self.std = tuple(mean), tuple(std)
        size = getattr(model.config, "image_size", None)
        self.image_size = size if isinstance(size, int) else None
        self._interpolate = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.scale + self.shift
        kw = {}
        if self._interpolate and self.image_size and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            kw["interpolate_pos_encoding"] = True  # ViT / DeiT / BEiT at another crop size
        return self.model(pixel_values=x, **kw).logits

    def config_dict(self) -> dict[str, Any]:
        return {"config": self.model.config.to_dict(), "image_mean": list(self.mean), "image_std": list(self.std)}


def _normalisation(source: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The image processor's mean/std (ImageNet's where the model has no processor config)."""
    if source is not None:
        p = Path(source) / "preprocessor_config.json"
        if p.is_file():
            d = json.loads(p.read_text())
            if d.get("image_mean") and d.get("image_std"):
                return tuple(d["image_mean"]), tuple(d["image_std"])
    return IMAGENET_MEAN, IMAGENET_STD


def _folder_of(weights: str | None) -> str | None:
    """A ``save_pretrained`` folder named by ``weights`` (the folder, or a file inside it)."""
    if not weights or is_url(weights):
        return None
    p = Path(weights)
    for folder in (p, p.parent):
        if folder.is_dir() and (folder / "config.json").is_file():
            return str(folder)
    return None


def _package_of(weights: str | None) -> Path | None:
    """A visionsweep package (``checkpoint_run_id``) named by ``weights``: its folder."""
    if not weights or is_url(weights):
        return None
    p = Path(weights)
    for folder in (p, p.parent):
        if (folder / "model.json").is_file() and (folder / CONFIG_FILE).is_file():
            return folder
    return None


def create(name: str, *, num_classes: int, settings: dict[str, Any], weights=None, architecture=None,
           segmentation: bool = False, package_folder: Path | None = None, where: str = "model_name"
           ) -> HFImageClassifier:
    """The family's builder for ``trainers.models.factory.create_model``: a new model from ``weights`` (:func:`build`),
    or a package's model from the architecture it saved (``hf_config.json``: no hub, no cache), its weights loaded
    afterwards by ``trainers.package``."""
    if package_folder is None:
        return build(name, num_classes, weights)
    config = Path(package_folder) / CONFIG_FILE
    if not config.is_file():
        raise VisionsweepError(f"{where}: not a model package of {name} ({CONFIG_FILE} is missing)")
    return from_package_config(json.loads(config.read_text()), num_classes)


def build(name: str, num_classes: int, weights=None) -> HFImageClassifier:
    """A classifier with ``num_classes`` outputs from ``weights``: an ``InitialWeights`` (a model folder found by
    ``trainers.models.weights``; source ``none``: its config only, random weights), a path (a folder or a package), or
    None (``from_pretrained`` of the name: the cache, or the hub where there is internet). Errors name the
    model and every place looked in."""
    require_transformers()
    random_init = isinstance(weights, InitialWeights) and weights.source == "none"
    if isinstance(weights, InitialWeights):
        weights = weights.path
    package = _package_of(weights)
    if package is not None:  # a previous visionsweep run's model: its architecture, then its weights
        model = from_package_config(json.loads((package / CONFIG_FILE).read_text()), num_classes)
        load_pretrained(model, str(package / "model.safetensors"))
        return model
    from transformers import AutoConfig, AutoModelForImageClassification

    ident = hub_id(name)
    folder = _folder_of(weights) or (ident if Path(ident).is_dir() else None)
    source = folder or ident
    labels = dict(num_labels=num_classes, id2label={i: str(i) for i in range(num_classes)},
                  label2id={str(i): i for i in range(num_classes)})
    try:
        # HF_HUB_OFFLINE read now (huggingface_hub reads it once, at import): no hub round trips when set
        local = _offline() or folder is not None
        if random_init:
            config = AutoConfig.from_pretrained(source, local_files_only=local, **labels)
            inner = AutoModelForImageClassification.from_config(config)
        else:
            inner = AutoModelForImageClassification.from_pretrained(
                source, local_files_only=local, ignore_mismatched_sizes=True, **labels)
    except (OSError, ValueError) as e:
        looked = [f"visionsweep.pretrained_weights ({weights})"] if weights else []
        looked += [f"the folder {ident}" if Path(ident).is_absolute() or ident.startswith(".") else
                   "the Hugging Face cache (HF_HOME / HF_HUB_CACHE)"]
        if not folder and not _offline():
            looked.append("the hub")
        raise VisionsweepError(f"model_name {name}{'' if ident == name else f' ({ident})'}: no transformers "
                               f"image classifier found; looked in "
                               f"{', '.join(looked)} ({_first_line(e)}). Where the machine has no internet, "
                               "put a save_pretrained folder at visionsweep.pretrained_weights") from None
    mean, std = _normalisation(folder or _cached_folder(ident))
    return HFImageClassifier(inner, mean, std)


def from_package_config(d: dict[str, Any], num_classes: int) -> HFImageClassifier:
    """The architecture saved in a package (no hub, no cache), randomly initialised."""
    require_transformers()
    from transformers import AutoConfig, AutoModelForImageClassification

    cfg = dict(d["config"])
    model_type = cfg.pop("model_type")
    cfg.update(num_labels=num_classes, id2label={i: str(i) for i in range(num_classes)},
               label2id={str(i): i for i in range(num_classes)})
    config = AutoConfig.for_model(model_type, **cfg)
    return HFImageClassifier(AutoModelForImageClassification.from_config(config),
                             tuple(d["image_mean"]), tuple(d["image_std"]))


@functools.lru_cache(maxsize=64)
def default_input_size(name: str) -> int | None:
    """The model's own image size where its config is on this machine (a folder or the cache), else None."""
    try:
        from transformers import AutoConfig

        ident = hub_id(name)
        cfg = AutoConfig.from_pretrained(ident, local_files_only=True)
    except Exception:  # noqa: BLE001 - no local config (or no transformers): the table's default stays
        return None
    size = getattr(cfg, "image_size", None)
    return size if isinstance(size, int) else None


def freeze_groups(model: nn.Module) -> list[tuple[str, ...]]:
    """``layers_to_freeze`` groups of a transformers backbone: the embeddings, then each encoder layer
    (``layers.N.`` / ``encoder.layer.N.`` for ViT / DeiT / BEiT, ``encoder.layers.N.`` (stages) for Swin),
    in order."""
    embeddings, layers = set(), {}
    for pname, _ in model.named_parameters():
        m = re.match(r"(.*?\.embeddings\.)", pname)
        if m:
            embeddings.add(m.group(1))
            continue
        m = re.match(r"(.*?\.(?:encoder\.)?layers?\.(\d+)\.)", pname)
        if m:
            layers[int(m.group(2))] = m.group(1)
    groups = [tuple(sorted(embeddings))] if embeddings else []
    return groups + [(layers[i],) for i in sorted(layers)]


def _cached_folder(ident: str) -> str | None:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(ident, local_files_only=True)
    except Exception:  # noqa: BLE001 - not in the cache: ImageNet statistics
        return None


def _offline() -> bool:
    import os

    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
