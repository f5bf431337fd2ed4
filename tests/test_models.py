"""Every classification model of SPEC §5.1 builds and runs; layers_to_freeze follows §6.3."""

from __future__ import annotations

import pytest
import torch

from trainers import hyperparameters as hp
from trainers.errors import SpecError
from trainers.models.classifiers import build_model, freeze_layers, list_models


def test_registry_covers_the_classification_zoo():
    assert sorted(hp.CLASSIFICATION_MODELS) == list_models()


@pytest.mark.parametrize("name", hp.CLASSIFICATION_MODELS)
def test_model_builds_and_gives_one_logit_per_class(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, crop_size=32).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_layers_to_freeze_resnet_groups():
    model = build_model("resnet18", 3, 32)
    freeze_layers(model, "resnet18", 2)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    # group 0 is ('conv1.', 'bn1.'), group 1 is 'layer1.'; layer2 onwards still trains
    assert frozen and all(n.startswith(("conv1.", "bn1.", "layer1.")) for n in frozen)
    assert any(n.startswith("layer1.") for n in frozen) and any(n.startswith("layer2.") for n in _trainable(model))


def test_layers_to_freeze_vit_and_mobilenet():
    vit = build_model("vits16r224", 3, 32)
    freeze_layers(vit, "vits16r224", 3)  # patch_embed, blocks.0, blocks.1
    frozen = {n for n, p in vit.named_parameters() if not p.requires_grad}
    assert all(n.startswith(("patch_embed", "blocks.0.", "blocks.1.")) for n in frozen)
    assert any(n.startswith("blocks.1.") for n in frozen) and "blocks.2.norm1.weight" in _trainable(vit)
    mb = build_model("mobilenetv2", 3, 32)
    freeze_layers(mb, "mobilenetv2", 19)
    assert all(n.startswith("classifier") for n in _trainable(mb))


def test_layers_to_freeze_errors():
    with pytest.raises(SpecError, match="has 5 layer groups, but got 6"):
        freeze_layers(build_model("resnet18", 3, 32), "resnet18", 6)
    with pytest.raises(SpecError, match="resnest101 has 5 layer groups, but got 6"):
        freeze_layers(build_model("resnest101", 3, 32), "resnest101", 6)


def test_resnest_freezes_its_stem_and_stages_in_order():
    # §13 A12: ResNeSt's groups come from the model (deep stem conv1 + bn1, then layer1..layer4)
    net = build_model("resnest50", 3, 32)
    freeze_layers(net, "resnest50", 2)
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert any(n.startswith("conv1.") for n in frozen) and any(n.startswith("layer1.") for n in frozen)
    assert all(n.startswith(("conv1.", "bn1.", "layer1.")) for n in frozen)
    assert "layer2.0.conv1.weight" in _trainable(net)


def test_pretrained_weights_from_a_file_skip_the_mismatched_head(tmp_path):
    from safetensors.torch import save_file

    src = build_model("resnet18", 10, 32)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    dst = build_model("resnet18", 3, 32, weights=str(tmp_path / "w.safetensors"))
    assert torch.equal(dst.conv1.weight, src.conv1.weight)
    assert dst.fc.weight.shape == (3, 512)
