"""Tiling for small-object detection (SPEC: ``tile_grid_size``, ``tile_overlap_ratio``,
``tile_predictions_nms_threshold``).

Why tiles: a torchvision detector resizes every input to a fixed ``min_size``/``max_size``, so a
10-pixel object in a 4000-pixel photo shrinks to a couple of pixels and disappears in the feature
maps. Cutting the image into a grid of overlapping tiles and feeding each tile to the detector
upsamples the tile instead, so small objects keep enough pixels to be found. The full image is always
looked at too, because big objects may not fit into any tile.

* Training looks at the full image and every tile (:func:`windows_with_full`), with targets cut to
  each window by :func:`crop_target`.
* Validation and inference run the detector on the full image and every tile
  (:func:`predict_tiled`), move each output back into full-image coordinates (:func:`shift_output`)
  and merge them with class-wise NMS (:func:`merge_outputs`), because an object in an overlap region
  or on a tile border is found several times.

All functions are pure (no state, no I/O); coordinates are pixels of the full image unless stated.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torchvision.ops import batched_nms

from trainers.hyperparameters import _as_grid

Window = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels of the full image (x1, y1 exclusive)

_PER_BOX_SKIP = ("boxes", "masks", "area")  # per-box keys crop_target computes itself


def parse_grid(value: Any) -> tuple[int, int] | None:
    """'3x2' / '(3, 2)' / (3, 2) / None / '' / 'None' -> (columns, rows) or None (tiling off).

    The spellings are exactly those the job validator accepts (it is the same parser,
    ``hyperparameters._as_grid``), so a value that passed validation always parses here, and a value
    read back from a model package (canonical '3x2') too. Raises ValueError on anything else.
    """
    if value is None or (isinstance(value, str) and value.strip() in ("", "None", "none", "null")):
        return None
    cols, rows = _as_grid(value).split("x")
    return int(cols), int(rows)


def _axis(length: int, n: int, overlap: float) -> list[tuple[int, int]]:
    """``n`` intervals over ``[0, length)``: real-valued tiles of size ``t = length / (n - (n-1)*overlap)``
    at stride ``t * (1 - overlap)`` (so the last one ends exactly at ``length``), rounded to pixels.

    Rounding each real edge independently (instead of rounding the tile size once) keeps two
    properties exact at any image size: with overlap 0 the tiles partition the axis with no gap or
    double pixel, and the last tile is flush with the edge; tile sizes then differ by at most 1 px.
    """
    if length < 1:
        raise ValueError(f"image size must be positive, got {length}")
    if n < 1:
        raise ValueError(f"grid dimensions must be positive, got {n}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    size = length / (n - (n - 1) * overlap)
    stride = size * (1.0 - overlap)
    out = []
    for i in range(n):
        a = int(round(i * stride))
        b = length if i == n - 1 else int(round(i * stride + size))
        a = min(max(a, 0), length - 1)  # tiny images / huge grids: still at least 1 px per tile
        b = min(max(b, a + 1), length)
        out.append((a, b))
    return out


def tile_windows(width: int, height: int, grid: tuple[int, int], overlap: float) -> list[Window]:
    """The grid's tiles: equal-size tiles (up to 1 px of rounding) covering the image, adjacent tiles
    overlapping by ``overlap`` of a tile (``tile_w = W / (cols - (cols - 1) * overlap)``), left-to-right
    then top-to-bottom, last tile flush with the right/bottom edge, integer pixel coords, every tile at
    least 1 px.

    The overlap exists so that an object cut by one tile's border is whole in the neighbouring tile
    (if it is smaller than the overlap); the duplicates this creates are removed by :func:`merge_outputs`.
    """
    cols, rows = grid
    xs = _axis(int(width), int(cols), float(overlap))
    ys = _axis(int(height), int(rows), float(overlap))
    return [(x0, y0, x1, y1) for (y0, y1) in ys for (x0, x1) in xs]


def windows_with_full(width: int, height: int, grid: tuple[int, int], overlap: float) -> list[Window]:
    """``[(0, 0, width, height)] + tile_windows(...)``: what training and inference look at.

    The full image comes first: big objects that no tile contains are only seen there, and on equal
    scores :func:`merge_outputs` prefers earlier outputs, i.e. the full image's uncut boxes.
    """
    return [(0, 0, int(width), int(height))] + tile_windows(width, height, grid, overlap)


def crop_target(target: dict, window: Window, min_visible: float = 0.3) -> dict:
    """A torchvision detection target of the full image -> the same target for the crop ``window``.

    ``target``: ``{"boxes": FloatTensor[N,4] xyxy pixels, "labels": Int64[N], optional "iscrowd": [N],
    optional "masks": UInt8/Bool [N,H,W]}`` (other per-box tensors of length N are filtered alongside;
    an "area" entry is recomputed for the clipped boxes; anything else is passed through).

    Boxes are clipped to the window and moved to the crop's pixel coordinates. A box whose visible
    area is < ``min_visible`` of its full area is dropped: a half-cut object would teach the model
    that a fragment is a whole object (wrong extent), and the uncut object is still trained on in the
    full image and in overlapping tiles. Masks are cropped to the window. When nothing remains the
    result holds empty tensors of the right shapes ([0,4] boxes, [0] labels, [0,h,w] masks).
    """
    x0, y0, x1, y1 = window
    boxes = target["boxes"]
    n = boxes.shape[0]
    lo = boxes.new_tensor([x0, y0, x0, y0])
    hi = boxes.new_tensor([x1, y1, x1, y1])
    clipped = torch.minimum(torch.maximum(boxes, lo), hi)
    full_area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    vis_area = (clipped[:, 2] - clipped[:, 0]).clamp(min=0) * (clipped[:, 3] - clipped[:, 1]).clamp(min=0)
    keep = (vis_area > 0) & (vis_area >= min_visible * full_area)

    out: dict = {}
    for key, value in target.items():
        if key in _PER_BOX_SKIP:
            continue
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == n:
            out[key] = value[keep]
        else:
            out[key] = value
    out["boxes"] = (clipped[keep] - lo).reshape(-1, 4)
    if "area" in target:
        out["area"] = vis_area[keep].to(target["area"].dtype) if isinstance(target["area"], torch.Tensor) \
            else vis_area[keep]
    if "masks" in target:
        out["masks"] = target["masks"][keep][:, y0:y1, x0:x1]
    return out


def shift_output(output: dict, window: Window, image_size: tuple[int, int]) -> dict:
    """A detector's output on the crop ``window`` -> the same output in full-image coordinates.

    ``output``: ``{"boxes" [M,4], "scores" [M], "labels" [M], optional "masks" [M,1,h,w] float}`` in the
    crop's pixels. Boxes are offset by ``(x0, y0)``; masks are pasted into zeros of ``[M,1,H,W]``
    (``image_size = (H, W)``) at the window, since a tile sees nothing outside itself. Other entries
    are passed through.
    """
    x0, y0, x1, y1 = window
    out = dict(output)
    boxes = output["boxes"]
    out["boxes"] = boxes + boxes.new_tensor([x0, y0, x0, y0])
    if "masks" in output:
        masks = output["masks"]
        h, w = masks.shape[-2:]
        if (h, w) != (y1 - y0, x1 - x0):
            raise ValueError(f"mask size {(h, w)} does not match window {window} of size {(y1 - y0, x1 - x0)}")
        height, width = image_size
        full = masks.new_zeros((*masks.shape[:-2], height, width))
        full[..., y0:y1, x0:x1] = masks
        out["masks"] = full
    return out


def _empty_output(like: dict | None = None) -> dict:
    if like is None:
        return {"boxes": torch.zeros((0, 4)), "scores": torch.zeros((0,)),
                "labels": torch.zeros((0,), dtype=torch.int64)}
    return {k: v[:0] if isinstance(v, torch.Tensor) else v for k, v in like.items()}


def merge_outputs(outputs: list[dict], nms_threshold: float, max_detections: int) -> dict:
    """Outputs already in full-image coordinates (from :func:`shift_output`) -> one output.

    Concatenates them, runs class-wise NMS (``torchvision.ops.batched_nms``) at ``nms_threshold``,
    keeps the top ``max_detections`` by score, sorted by score descending. NMS is class-wise because
    the duplicates come from the same object seen in several windows (same class), while two
    classes at the same place are distinct predictions the metric should judge separately.

    Ties in score are broken by input order (earlier output, then earlier box), so the result is
    deterministic and, with :func:`windows_with_full`'s order, the full image's uncut box wins over
    a tile's cut-off box of the same object.
    """
    outputs = [o for o in outputs if o["boxes"].shape[0] > 0] or outputs[:1]
    if not outputs:
        return _empty_output()
    keys = [k for k, v in outputs[0].items() if isinstance(v, torch.Tensor)]
    cat = {k: torch.cat([o[k] for o in outputs]) for k in keys}
    scores = cat["scores"]
    if scores.numel() == 0:
        return _empty_output(cat)
    # Stable order by score, then hand NMS strictly decreasing surrogate scores: torchvision's NMS sorts
    # unstably, which would make the winner among equal scores arbitrary.
    order = torch.sort(scores, descending=True, stable=True).indices
    rank_scores = torch.arange(order.numel(), 0, -1, dtype=torch.float32, device=scores.device)
    kept = batched_nms(cat["boxes"][order].float(), rank_scores, cat["labels"][order], float(nms_threshold))
    kept = order[kept[: max(int(max_detections), 0)]]
    return {k: v[kept] for k, v in cat.items()}


@torch.no_grad()
def predict_tiled(model: Callable, image: torch.Tensor, grid: Any, overlap: float, nms_threshold: float,
                  max_detections: int, batch_size: int = 4) -> dict:
    """Run a torchvision-style detector on the full image and each tile, and merge the results.

    ``model`` is in eval mode and called as ``model(list_of_CHW_float_tensors) -> list of output dicts``;
    ``image`` is ``[3,H,W]``; ``grid`` anything :func:`parse_grid` accepts (None: full image only).
    Windows are fed in batches of ``batch_size`` (a tile plus the full image at the detector's input
    size costs as much memory as several images), each output is shifted to full-image coordinates
    and all are merged with :func:`merge_outputs`. Returns one output dict in full-image pixels.
    """
    height, width = image.shape[-2:]
    cells = parse_grid(grid)
    windows = [(0, 0, width, height)] if cells is None else windows_with_full(width, height, cells, overlap)
    shifted = []
    step = max(int(batch_size), 1)
    for start in range(0, len(windows), step):
        batch = windows[start:start + step]
        crops = [image[:, y0:y1, x0:x1] for (x0, y0, x1, y1) in batch]
        for window, out in zip(batch, model(crops)):
            shifted.append(shift_output(out, window, (height, width)))
    return merge_outputs(shifted, nms_threshold, max_detections)
