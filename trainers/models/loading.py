"""Loading weights into a model, and ``layers_to_freeze``: what every model family shares.

``load_pretrained`` takes a file (a path or fsspec URI; safetensors or a torch ``state_dict``) and loads every
tensor whose name and shape fit, so a checkpoint trained for other classes leaves the new heads as initialised;
a file none of whose tensors fit is an error, never a silent random initialisation. ``freeze_prefix_groups``
freezes the first N groups of a family's parameter-name prefixes (§6.3).
"""

from __future__ import annotations

import io
import logging

import torch
from torch import nn

from trainers.errors import SpecError, VisionsweepError

log = logging.getLogger(__name__)


def load_pretrained(model: nn.Module, uri: str, add_prefix: str = "", trusted: bool = False) -> int:
    """Load weights from a path or fsspec URI, skipping tensors whose shape differs (the head); returns how many
    tensors were loaded. ``add_prefix``: put in front of every key when no key has it (a model zoo checkpoint
    loaded into a wrapper whose own keys all start with it). ``trusted``: a file whose hash matched its
    publisher's may hold Python objects beside its tensors (OpenMMLab checkpoints keep their metadata so).
    A file none of whose tensors fit the model is an error, not a silent random initialisation."""
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
            state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=not trusted)
        except Exception as e:  # noqa: BLE001 - pickles with Python objects beside the tensors
            raise VisionsweepError(f"pretrained weights {uri}: not a plain state_dict "
                                   f"({str(e).splitlines()[0][:200]}); "
                                   "save its tensors with torch.save(ckpt['state_dict']) or as safetensors") from None
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise VisionsweepError(f"pretrained weights {uri}: expected a state_dict, but got {type(state).__name__}")
    return load_state(model, state, uri, add_prefix)


def load_state(model: nn.Module, state: dict, uri: str, add_prefix: str = "") -> int:
    """``load_pretrained``'s second half, for tensors already read (a converted checkpoint): those whose name and
    shape fit are loaded, the rest stays as initialised; ``uri`` names their file in messages."""
    own = model.state_dict()
    if add_prefix and not any(k.startswith(add_prefix) for k in state):
        state = {add_prefix + k: v for k, v in state.items()}
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        from timm.layers import resample_abs_pos_embed

        n_prefix = getattr(model, "num_prefix_tokens", 1)
        grid = model.patch_embed.grid_size
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], list(grid), num_prefix_tokens=n_prefix)
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise VisionsweepError(f"pretrained weights {uri}: none of its {len(state)} tensors fits "
                               f"{type(model).__name__} (e.g. {next(iter(state), 'none')!r}); expected the "
                               "model's own state_dict keys")
    fresh = sorted(k for k in own if k not in usable and not k.endswith("num_batches_tracked"))
    model.load_state_dict(usable, strict=False)
    log.info("loaded %d of %d tensors from %s (left as initialised: %s)", len(usable), len(state), uri,
             ", ".join(fresh[:6]) + (" ..." if len(fresh) > 6 else "") if fresh else "none")
    return len(usable)


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
