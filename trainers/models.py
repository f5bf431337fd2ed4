"""Model registry: ``model_name`` -> builder, for the classification zoo of SPEC §5.1.

Builders come from torchvision (MobileNetV2, ResNets) and timm (ResNeSt, SE-ResNeXt, ViTs). Weights:

* random initialisation by default (this must work with no network);
* a local path or fsspec URI per model (``visionsweep.pretrained_weights``), a safetensors file or a
  ``state_dict``; the classifier head is re-initialised when its shape differs;
* the hubs' ImageNet weights only with ``visionsweep.download_weights: true`` (needs internet).

``layers_to_freeze`` uses the prefix groups of §6.3, keyed by family.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import torch
from torch import nn

from trainers.errors import SpecError, VisionsweepError

log = logging.getLogger(__name__)

_RESNET_GROUPS = [("conv1.", "bn1."), "layer1.", "layer2.", "layer3.", "layer4."]
# timm's SE-ResNeXt names its stem conv1/bn1 where §6.3's list (from another implementation) says
# 'layer0.': the stem is group 0 here, so N keeps its meaning (N=2 freezes the stem and layer1).
_SERESNEXT_GROUPS = [("conv1.", "bn1."), "layer1.", "layer2.", "layer3.", "layer4."]
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


_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> None:
    if entry.name in _REGISTRY:
        raise ValueError(f"a model is already registered under the name {entry.name!r}")
    _REGISTRY[entry.name] = entry


for _n in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
    register(ModelEntry(_n, "torchvision", _n, tuple(_RESNET_GROUPS)))
register(ModelEntry("mobilenetv2", "torchvision", "mobilenet_v2", tuple(_MOBILENET_GROUPS)))
register(ModelEntry("resnest50", "timm", "resnest50d", None))
register(ModelEntry("resnest101", "timm", "resnest101e", None))
register(ModelEntry("seresnext", "timm", "seresnext50_32x4d", tuple(_SERESNEXT_GROUPS)))
register(ModelEntry("vits16r224", "timm", "vit_small_patch16_224", tuple(_vit_groups(12)), True))
register(ModelEntry("vitb16r224", "timm", "vit_base_patch16_224", tuple(_vit_groups(12)), True))
register(ModelEntry("vitl16r224", "timm", "vit_large_patch16_224", tuple(_vit_groups(24)), True))


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SpecError(f"model_name {name!r} has no classification builder; expected one of "
                        f"{', '.join(list_models())}") from None


def build_model(name: str, num_classes: int, crop_size: int, weights: str | None = None,
                download: bool = False) -> nn.Module:
    """A classifier with ``num_classes`` outputs for ``crop_size`` inputs."""
    from trainers import hf_models

    if hf_models.is_hf_name(name):
        return hf_models.build(name, num_classes, weights)
    e = get_entry(name)
    if e.source == "torchvision":
        import torchvision

        hub = "DEFAULT" if download and not weights else None
        if hub:
            model = torchvision.models.get_model(e.arch, weights=hub)
            _replace_head(model, num_classes)
        else:
            model = torchvision.models.get_model(e.arch, weights=None, num_classes=num_classes)
    else:
        import timm

        kwargs = {"img_size": crop_size} if e.fixed_input else {}
        model = timm.create_model(e.arch, pretrained=download and not weights, num_classes=num_classes, **kwargs)
    if weights:
        load_pretrained(model, weights)
    return model


def _replace_head(model: nn.Module, num_classes: int) -> None:
    if hasattr(model, "fc"):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)


def load_pretrained(model: nn.Module, uri: str, add_prefix: str = "") -> None:
    """Load weights from a path or fsspec URI, skipping tensors whose shape differs (the head).
    ``add_prefix``: put in front of every key when no key has it (a model zoo checkpoint loaded into a wrapper
    whose own keys all start with it)."""
    import fsspec

    try:
        with fsspec.open(uri, "rb") as f:
            blob = f.read()
    except (FileNotFoundError, OSError) as e:
        raise VisionsweepError(f"pretrained weights {uri}: cannot read ({e})") from None
    if uri.endswith(".safetensors"):
        from safetensors.torch import load

        state = load(blob)
    else:
        try:
            state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - pickles with Python objects beside the tensors
            raise VisionsweepError(f"pretrained weights {uri}: not a plain state_dict ({str(e).splitlines()[0][:200]}); "
                                   "save its tensors with torch.save(ckpt['state_dict']) or as safetensors") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = model.state_dict()
    if add_prefix and not any(k.startswith(add_prefix) for k in state):
        state = {add_prefix + k: v for k, v in state.items()}
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        from timm.layers import resample_abs_pos_embed

        n_prefix = getattr(model, "num_prefix_tokens", 1)
        grid = model.patch_embed.grid_size
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], list(grid), num_prefix_tokens=n_prefix)
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(usable))
    model.load_state_dict(usable, strict=False)
    log.info("loaded %d tensors from %s (re-initialised: %s)", len(usable), uri, ", ".join(skipped[:6]) or "none")


def freeze_layers(model: nn.Module, name: str, n: int | None) -> int:
    """Freeze the first ``n`` prefix groups of the classifier's family (§6.3); returns the parameters frozen."""
    if not n:
        return 0
    from trainers import hf_models

    groups = hf_models.freeze_groups(model) if hf_models.is_hf_name(name) else get_entry(name).freeze_groups
    return freeze_prefix_groups(model, name, groups, n)


def fixed_input(name: str) -> bool:
    """Whether training and validation crops must be equal (timm's ViTs; transformers models interpolate)."""
    from trainers import hf_models

    return not hf_models.is_hf_name(name) and get_entry(name).fixed_input


def freeze_prefix_groups(model: nn.Module, name: str, groups, n: int | None) -> int:
    """Set ``requires_grad=False`` on every parameter whose name starts with a prefix of the first ``n``
    groups (a tuple entry is one group); errors name the model and what it has."""
    if not n:
        return 0
    if groups is None:
        raise SpecError(f"layers_to_freeze: model {name} has no layer groups to freeze")
    if n > len(groups):
        raise SpecError(f"layers_to_freeze: {name} has {len(groups)} layer groups, but got {n}")
    prefixes = tuple(p for g in groups[:n] for p in ((g,) if isinstance(g, str) else g))
    frozen = 0
    for pname, param in model.named_parameters():
        if pname.startswith(prefixes):
            param.requires_grad_(False)
            frozen += 1
    if frozen == 0:
        raise SpecError(f"layers_to_freeze: no parameter of {name} matches {prefixes}")
    return frozen
