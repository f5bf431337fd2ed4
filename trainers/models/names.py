"""Which family a ``model_name`` belongs to, and the spellings it may take (SPEC §4.3, §5.3).

* A Hugging Face ``transformers`` classifier: a hub id (``org/name``), a local ``save_pretrained`` folder, or the
  curated registry's asset name (``/`` written as ``-``: ``google-vit-base-patch16-224``).
* An MMDetection model: a zoo config name (``..._coco``) or the curated ``mmd-3x-`` spelling.
* Otherwise a built-in model of §5.1.

A leaf module (no torch, no optional library): the job validator and the defaults table read it.
"""

from __future__ import annotations

import re

MMDET_PREFIX = "mmd-3x-"

# The curated models of §5.3, by the registry's asset name (``/`` -> ``-``) -> hub id.
CURATED_HF = {
    "microsoft-beit-base-patch16-224-pt22k-ft22k": "microsoft/beit-base-patch16-224-pt22k-ft22k",
    "google-vit-base-patch16-224": "google/vit-base-patch16-224",
    "facebook-deit-base-patch16-224": "facebook/deit-base-patch16-224",
    "microsoft-swinv2-base-patch4-window12-192-22k": "microsoft/swinv2-base-patch4-window12-192-22k",
}

# §5.3's curated MMDetection models, by task
CURATED_MMDET = {
    "image_object_detection": (
        "mmd-3x-sparse-rcnn_r50_fpn_300-proposals_crop-ms-480-800-3x_coco",
        "mmd-3x-sparse-rcnn_r101_fpn_300-proposals_crop-ms-480-800-3x_coco",
        "mmd-3x-deformable-detr_refine_twostage_r50_16xb2-50e_coco",
        "mmd-3x-vfnet_r50-mdconv-c3-c5_fpn_ms-2x_coco",
        "mmd-3x-vfnet_x101-64x4d-mdconv-c3-c5_fpn_ms-2x_coco",
        "mmd-3x-yolof_r50_c5_8x8_1x_coco",
    ),
    "image_instance_segmentation": ("mmd-3x-mask-rcnn_swin-t-p4-w7_fpn_1x_coco",),
}


def is_hf_name(name: str) -> bool:
    """A hub id or local folder (has a ``/``) or a curated registry name."""
    return "/" in name or name in CURATED_HF


def hub_id(name: str) -> str:
    """The hub id of a model name in either spelling."""
    return CURATED_HF.get(name, name)


def model_backend(model_name: str) -> str:
    """Which trainer family a model name belongs to: ``builtin``, ``huggingface`` or ``mmdetection`` (§4.3)."""
    if is_hf_name(model_name):  # a hub id, a local folder, or a curated registry name (§5.3)
        return "huggingface"
    if model_name.startswith(MMDET_PREFIX) or re.search(r"_coco$", model_name):
        return "mmdetection"
    return "builtin"
