"""Model registry: ``model_name`` -> builder, for the classification zoo of SPEC §5.1.

Builders come from torchvision (MobileNetV2, ResNets) and timm (ResNeSt, SE-ResNeXt, ViTs). A builder takes
the architecture and, optionally, what to start from:

* :class:`trainers.models.weights.InitialWeights`: the published weights of the model (found and checked by
  ``trainers.models.weights``; the default of every job), loaded the way their library loads them: torchvision
  weights as a ``state_dict``, timm weights through timm's own pretrained loader (its checkpoint filters
  resample a ViT's position embedding to the crop size). The classifier head is re-initialised for the
  job's classes. Weights trained on inputs normalised other than ImageNet's (timm's ViTs use mean = std =
  0.5) have that normalisation folded into their patch embedding, so every model takes the same input;
* a path or fsspec URI (a model package's ``model.safetensors``, a ``state_dict``): tensors of another
  shape (the head) are re-initialised;
* nothing: random initialisation (``visionsweep.pretrained: false``).

``layers_to_freeze`` uses the prefix groups of §6.3, keyed by family.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainers.errors import SpecError
from trainers.models.loading import freeze_prefix_groups, load_pretrained
from trainers.models.names import is_hf_name
from trainers.models.weights.initial import InitialWeights
from trainers.registry import Registry
from trainers.transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

_RESNET_GROUPS = [("conv1.", "bn1."), "layer1.", "layer2.", "layer3.", "layer4."]
# timm's SE-ResNeXt names its stem conv1/bn1 where §6.3's list (from another implementation) says
# 'layer0.': the stem is group 0 here, so N keeps its meaning (N=2 freezes the stem and layer1).
_SERESNEXT_GROUPS = [("conv1.", "bn1."), "layer1.", "layer2.", "layer3.", "layer4."]
# §6.3 gives no list for ResNeSt (§13 A12): derived from timm's resnest50d / resnest101e, whose deep stem is
# conv1 (a Sequential of three convolutions) + bn1, then four stages layer1..layer4, as a ResNet.
_RESNEST_GROUPS = [("conv1.", "bn1."), "layer1.", "layer2.", "layer3.", "layer4."]
_MOBILENET_GROUPS = [f"features.{i}." for i in range(19)]


def _vit_groups(depth: int) -> list:
    # §6.3 lists 12 blocks; ViT-L has 24, so the list follows the real depth (§13 A12).
    return ["patch_embed"] + [f"blocks.{i}." for i in range(depth)]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: str  # "torchvision" | "timm"
    arch: str  # name in the source library
    freeze_groups: tuple | None
    fixed_input: bool = False  # ViTs: train and validation crops must be equal (§6.4)


CLASSIFIERS: Registry[ModelEntry] = Registry("classification model", SpecError)


def register(entry: ModelEntry) -> None:
    CLASSIFIERS.register(entry.name, entry)


for _n in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
    register(ModelEntry(_n, "torchvision", _n, tuple(_RESNET_GROUPS)))
register(ModelEntry("mobilenetv2", "torchvision", "mobilenet_v2", tuple(_MOBILENET_GROUPS)))
register(ModelEntry("resnest50", "timm", "resnest50d", tuple(_RESNEST_GROUPS)))
register(ModelEntry("resnest101", "timm", "resnest101e", tuple(_RESNEST_GROUPS)))
register(ModelEntry("seresnext", "timm", "seresnext50_32x4d", tuple(_SERESNEXT_GROUPS)))
register(ModelEntry("vits16r224", "timm", "vit_small_patch16_224", tuple(_vit_groups(12)), True))
register(ModelEntry("vitb16r224", "timm", "vit_base_patch16_224", tuple(_vit_groups(12)), True))
register(ModelEntry("vitl16r224", "timm", "vit_large_patch16_224", tuple(_vit_groups(24)), True))


def list_models() -> list[str]:
    return CLASSIFIERS.names()


def get_entry(name: str) -> ModelEntry:
    return CLASSIFIERS.get(name, f"model_name {name!r} has no classification builder")


def create(name: str, *, num_classes: int, settings: dict[str, Any], weights=None, architecture=None,
           segmentation: bool = False, package_folder=None, where: str = "model_name") -> nn.Module:
    """The family's builder for ``trainers.models.factory.create_model``: the classifier for the crop it trains (or
    was trained) at, ``settings["training_crop_size"]``; a package's weights are loaded by ``trainers.package``."""
    return build_model(name, num_classes, int(settings["training_crop_size"]), weights)


def build_model(name: str, num_classes: int, crop_size: int, weights=None) -> nn.Module:
    """A classifier of the zoo with ``num_classes`` outputs for ``crop_size`` inputs, from ``weights`` (see the module
    docstring: an ``InitialWeights``, a path, or None for random initialisation). Any family's model:
    ``trainers.models.factory.create_model``."""
    e = get_entry(name)
    published = isinstance(weights, InitialWeights) and weights.source != "none"
    if e.source == "torchvision":
        import torchvision

        model = torchvision.models.get_model(e.arch, weights=None, num_classes=num_classes)
        if weights is not None and (published or not isinstance(weights, InitialWeights)):
            load_pretrained(model, _path(weights), trusted=published and weights.verified)
        return model
    import timm

    kwargs = {"img_size": crop_size} if e.fixed_input else {}
    if published and weights.entry is not None and weights.entry.library == "timm":
        # timm's own loader: its checkpoint filter (ViT position embeddings resampled to img_size), the head
        # dropped for another number of classes
        model = timm.create_model(e.arch, pretrained=True, num_classes=num_classes,
                                  pretrained_cfg_overlay={"file": weights.path, "custom_load": False}, **kwargs)
        fold_input_normalisation(model)
        return model
    model = timm.create_model(e.arch, pretrained=False, num_classes=num_classes, **kwargs)
    if weights is not None and not (isinstance(weights, InitialWeights) and weights.source == "none"):
        load_pretrained(model, _path(weights), trusted=published and weights.verified)
    return model


def _path(weights) -> str:
    return weights if isinstance(weights, str) else weights.path


def fold_input_normalisation(model: nn.Module) -> bool:
    """Make a timm model whose pretrained weights expect inputs normalised by its config's mean/std take
    ImageNet-normalised inputs (as every classifier here does) by folding the affine change into its first
    convolution: exact for a convolution without padding (a ViT's patch embedding). Returns whether it did."""

    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if not mean or not std or (tuple(mean), tuple(std)) == (tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)):
        return False
    conv = model.get_submodule(cfg.get("first_conv", ""))
    if not isinstance(conv, nn.Conv2d) or any(conv.padding) or conv.in_channels != 3:
        log.warning("%s: pretrained for inputs normalised by mean %s, std %s; its first layer cannot absorb the "
                    "change exactly, so it sees ImageNet-normalised inputs", cfg.get("architecture"), mean, std)
        return False
    scale = torch.tensor(IMAGENET_STD) / torch.tensor(std)  # x_model = x_imagenet * scale + shift, per channel
    shift = (torch.tensor(IMAGENET_MEAN) - torch.tensor(mean)) / torch.tensor(std)
    with torch.no_grad():
        w = conv.weight
        bias_add = (w * shift.view(1, 3, 1, 1).to(w)).sum(dim=(1, 2, 3))
        w.mul_(scale.view(1, 3, 1, 1).to(w))
        if conv.bias is None:
            conv.bias = nn.Parameter(bias_add)
        else:
            conv.bias.add_(bias_add)
    return True


def _replace_head(model: nn.Module, num_classes: int) -> None:
    if hasattr(model, "fc"):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)


def freeze_layers(model: nn.Module, name: str, n: int | None) -> int:
    """Freeze the first ``n`` prefix groups of the classifier's family (§6.3); returns the parameters frozen."""
    if not n:
        return 0
    if is_hf_name(name):
        from trainers.models.huggingface import freeze_groups as hf_groups

        groups = hf_groups(model)
    else:
        groups = get_entry(name).freeze_groups
    return freeze_prefix_groups(model, name, groups, n)


def fixed_input(name: str) -> bool:
    """Whether training and validation crops must be equal (timm's ViTs; transformers models interpolate)."""
    return not is_hf_name(name) and get_entry(name).fixed_input
