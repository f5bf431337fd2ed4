"""Tiling for small-object detection (trainers/tiling.py): grids, windows, target cropping, merging."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainers.tiling import (
    crop_target,
    merge_outputs,
    parse_grid,
    predict_tiled,
    shift_output,
    tile_windows,
    windows_with_full,
)

# --- parse_grid ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["3x2", "3X2", "(3, 2)", " 3 x 2 ", (3, 2), [3, 2]])
def test_parse_grid_accepts_every_spelling_as_columns_rows(value):
    assert parse_grid(value) == (3, 2)


@pytest.mark.parametrize("value", [None, "", "None"])
def test_parse_grid_none_means_tiling_off(value):
    assert parse_grid(value) is None


@pytest.mark.parametrize("value", ["3", "3x", "axb", "0x2", "3x2x1", (3,), (3, 2, 1), (0, 2), 7])
def test_parse_grid_rejects_nonsense(value):
    with pytest.raises(ValueError):
        parse_grid(value)


# --- windows ------------------------------------------------------------------------------------

def _coverage(windows, width, height):
    cover = torch.zeros(height, width, dtype=torch.int64)
    for x0, y0, x1, y1 in windows:
        cover[y0:y1, x0:x1] += 1
    return cover


@pytest.mark.parametrize("width,height,grid,overlap", [
    (120, 90, (3, 2), 0.25), (101, 67, (3, 2), 0.25), (101, 67, (4, 3), 0.5), (640, 480, (1, 1), 0.25),
    (5, 3, (4, 3), 0.25),
])
def test_windows_count_order_cover_and_flush(width, height, grid, overlap):
    cols, rows = grid
    wins = tile_windows(width, height, grid, overlap)
    assert len(wins) == cols * rows
    for x0, y0, x1, y1 in wins:
        assert all(isinstance(v, int) for v in (x0, y0, x1, y1))
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height  # at least 1 px, inside
    assert (_coverage(wins, width, height) >= 1).all()  # every pixel seen
    # left-to-right, then top-to-bottom; first tile at the origin, last column/row flush with the edges
    assert wins[0][:2] == (0, 0)
    for r in range(rows):
        row = wins[r * cols:(r + 1) * cols]
        assert [w[0] for w in row] == sorted(w[0] for w in row)
        assert len({(w[1], w[3]) for w in row}) == 1
        assert row[-1][2] == width
    assert all(w[3] == height for w in wins[-cols:])


@pytest.mark.parametrize("width,height", [(120, 90), (101, 67), (1000, 750)])
def test_adjacent_tiles_overlap_by_the_ratio_of_the_tile_size(width, height):
    cols, rows, overlap = 3, 2, 0.25
    wins = tile_windows(width, height, (cols, rows), overlap)
    tile_w = width / (cols - (cols - 1) * overlap)
    tile_h = height / (rows - (rows - 1) * overlap)
    for x0, y0, x1, y1 in wins:  # equal size up to rounding
        assert abs((x1 - x0) - tile_w) <= 1 and abs((y1 - y0) - tile_h) <= 1
    for c in range(cols - 1):  # horizontal neighbours in the first row
        assert abs((wins[c][2] - wins[c + 1][0]) - overlap * tile_w) <= 1
    assert abs((wins[0][3] - wins[cols][1]) - overlap * tile_h) <= 1  # vertical neighbours


@pytest.mark.parametrize("width,height,grid", [(120, 90, (3, 2)), (101, 67, (3, 2)), (101, 67, (7, 5))])
def test_zero_overlap_tiles_partition_the_image(width, height, grid):
    wins = tile_windows(width, height, grid, 0.0)
    assert (_coverage(wins, width, height) == 1).all()


def test_known_windows_for_a_simple_grid():
    # 120 px / (3 - 2 * 0.25) = 48 px tiles at a 36 px stride
    assert tile_windows(120, 48, (3, 1), 0.25) == [(0, 0, 48, 48), (36, 0, 84, 48), (72, 0, 120, 48)]


def test_windows_with_full_puts_the_full_image_first():
    wins = windows_with_full(101, 67, (3, 2), 0.25)
    assert wins[0] == (0, 0, 101, 67)
    assert wins[1:] == tile_windows(101, 67, (3, 2), 0.25)


# --- crop_target --------------------------------------------------------------------------------

def _target(boxes, labels, masks=None):
    t = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
         "labels": torch.tensor(labels, dtype=torch.int64), "iscrowd": torch.zeros(len(labels), dtype=torch.int64)}
    if masks is not None:
        t["masks"] = masks
    return t


def test_box_inside_the_tile_moves_to_tile_coordinates_exactly():
    out = crop_target(_target([[50, 40, 60, 55]], [3]), (36, 30, 84, 81))
    assert out["boxes"].tolist() == [[14.0, 10.0, 24.0, 25.0]]
    assert out["labels"].tolist() == [3]
    assert out["iscrowd"].tolist() == [0]


def test_box_cut_in_half_by_the_border_is_clipped_or_dropped_by_min_visible():
    target = _target([[40, 10, 60, 20]], [1])  # the tile's right edge x=50 cuts it in half
    window = (0, 0, 50, 50)
    kept = crop_target(target, window, min_visible=0.3)
    assert kept["boxes"].tolist() == [[40.0, 10.0, 50.0, 20.0]]
    dropped = crop_target(target, window, min_visible=0.6)
    assert dropped["boxes"].shape == (0, 4) and dropped["labels"].shape == (0,)


def test_only_the_boxes_that_remain_are_kept_with_their_labels():
    target = _target([[0, 0, 10, 10], [200, 200, 210, 210], [45, 0, 55, 10]], [1, 2, 3])
    out = crop_target(target, (0, 0, 50, 50))  # box 2 outside, box 3 half inside
    assert out["labels"].tolist() == [1, 3]
    assert out["boxes"].tolist() == [[0.0, 0.0, 10.0, 10.0], [45.0, 0.0, 50.0, 10.0]]


def test_masks_are_cropped_like_the_boxes():
    masks = torch.zeros(2, 90, 120, dtype=torch.uint8)
    masks[0, 40:55, 50:60] = 1     # inside the window
    masks[1, 0:5, 0:5] = 1         # outside the window
    target = _target([[50, 40, 60, 55], [0, 0, 5, 5]], [1, 2], masks)
    window = (36, 30, 84, 81)
    out = crop_target(target, window)
    assert out["masks"].shape == (1, 51, 48) and out["masks"].dtype == torch.uint8
    x0, y0, x1, y1 = out["boxes"][0].int().tolist()
    assert out["masks"][0].sum() == 150 and out["masks"][0, y0:y1, x0:x1].all()  # mask and box agree
    assert torch.equal(out["masks"][0], masks[0, 30:81, 36:84])


def test_nothing_left_gives_empty_tensors_of_the_right_shapes():
    masks = torch.ones(1, 90, 120, dtype=torch.bool)
    out = crop_target(_target([[0, 0, 5, 5]], [1], masks), (60, 40, 120, 90))
    assert out["boxes"].shape == (0, 4) and out["boxes"].dtype == torch.float32
    assert out["labels"].shape == (0,) and out["labels"].dtype == torch.int64
    assert out["iscrowd"].shape == (0,)
    assert out["masks"].shape == (0, 50, 60) and out["masks"].dtype == torch.bool


def test_empty_target_stays_empty():
    out = crop_target(_target([], []), (0, 0, 10, 10))
    assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,)


# --- shift_output -------------------------------------------------------------------------------

def test_shift_output_offsets_boxes_and_pastes_masks():
    mask = torch.zeros(1, 1, 51, 48)
    mask[0, 0, 10:25, 14:24] = 0.8
    out = {"boxes": torch.tensor([[14.0, 10.0, 24.0, 25.0]]), "scores": torch.tensor([0.9]),
           "labels": torch.tensor([1]), "masks": mask}
    shifted = shift_output(out, (36, 30, 84, 81), (90, 120))
    assert shifted["boxes"].tolist() == [[50.0, 40.0, 60.0, 55.0]]
    assert shifted["scores"].tolist() == pytest.approx([0.9]) and shifted["labels"].tolist() == [1]
    assert shifted["masks"].shape == (1, 1, 90, 120)
    expected = torch.zeros(1, 1, 90, 120)
    expected[0, 0, 40:55, 50:60] = 0.8
    assert torch.equal(shifted["masks"], expected)
    assert out["boxes"].tolist() == [[14.0, 10.0, 24.0, 25.0]]  # input untouched


# --- merge_outputs ------------------------------------------------------------------------------

def _out(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(labels, dtype=torch.int64)}


def test_duplicates_from_overlapping_tiles_and_the_full_image_merge_into_the_best_box():
    full = _out([[40, 40, 60, 60]], [0.7], [1])
    left = _out([[40, 40, 50, 60]], [0.6], [1])    # cut by the left tile's border
    right = _out([[41, 39, 61, 60]], [0.95], [1])  # whole in the right tile, slightly different
    merged = merge_outputs([full, left, right], nms_threshold=0.25, max_detections=100)
    assert merged["boxes"].tolist() == [[41.0, 39.0, 61.0, 60.0]]
    assert merged["scores"].tolist() == pytest.approx([0.95])


def test_different_classes_at_the_same_place_are_both_kept():
    merged = merge_outputs([_out([[10, 10, 30, 30]], [0.9], [1]), _out([[10, 10, 30, 30]], [0.8], [2])], 0.25, 100)
    assert merged["labels"].tolist() == [1, 2]


def test_max_detections_and_score_order():
    boxes = [[i * 20, 0, i * 20 + 10, 10] for i in range(6)]  # disjoint, nothing suppressed
    merged = merge_outputs([_out(boxes, [0.1, 0.9, 0.5, 0.3, 0.8, 0.2], [1] * 6)], 0.25, max_detections=3)
    assert merged["scores"].tolist() == pytest.approx([0.9, 0.8, 0.5])
    assert merged["boxes"][:, 0].tolist() == [20.0, 80.0, 40.0]


def test_equal_scores_prefer_the_earlier_output():
    full = _out([[40, 40, 60, 60]], [0.9], [1])
    cut = _out([[40, 40, 50, 60]], [0.9], [1])
    for _ in range(5):
        assert merge_outputs([full, cut], 0.25, 100)["boxes"].tolist() == [[40.0, 40.0, 60.0, 60.0]]


def test_merging_nothing_gives_an_empty_output():
    merged = merge_outputs([_out([], [], []), _out([], [], [])], 0.25, 100)
    assert merged["boxes"].shape == (0, 4) and merged["scores"].shape == (0,) and merged["labels"].shape == (0,)


# --- predict_tiled ------------------------------------------------------------------------------

class BrightSquareDetector(nn.Module):
    """A fake detector: in each crop it gets, 'detects' the bounding box of the pixels > 0.5 (class 1,
    score 0.9), and optionally returns that region as a [1,1,h,w] mask. Records the crop sizes."""

    def __init__(self, masks=False):
        super().__init__()
        self.masks = masks
        self.calls = []

    def forward(self, images):
        self.calls.append([tuple(im.shape[-2:]) for im in images])
        outs = []
        for im in images:
            on = im[0] > 0.5
            ys, xs = torch.nonzero(on, as_tuple=True)
            if len(xs):
                out = _out([[xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]], [0.9], [1])
            else:
                out = _out([], [], [])
            if self.masks:
                out["masks"] = on.float()[None, None] if len(xs) else torch.zeros(0, 1, *on.shape)
            outs.append(out)
        return outs


def _image_with_square(width=120, height=90, box=(30, 10, 60, 30)):
    image = torch.zeros(3, height, width)
    x0, y0, x1, y1 = box
    image[:, y0:y1, x0:x1] = 1.0
    return image


def test_predict_tiled_finds_one_box_for_a_square_that_straddles_a_tile_border():
    # 3x2 tiles at 0.25 overlap: columns [0,48) [36,84) [72,120); x 30..60 is cut by both first columns
    image = _image_with_square()
    tiles = tile_windows(120, 90, (3, 2), 0.25)
    assert not any(x0 <= 30 and 60 <= x1 and y0 <= 10 and 30 <= y1 for x0, y0, x1, y1 in tiles)  # no tile holds it
    model = BrightSquareDetector().eval()
    merged = predict_tiled(model, image, "3x2", overlap=0.25, nms_threshold=0.25, max_detections=100, batch_size=4)
    assert merged["boxes"].shape == (1, 4)
    assert torch.allclose(merged["boxes"][0], torch.tensor([30.0, 10.0, 60.0, 30.0]), atol=1)
    assert merged["labels"].tolist() == [1]
    # 1 full image + 6 tiles, in batches of at most 4, the full image first
    assert [len(c) for c in model.calls] == [4, 3]
    assert model.calls[0][0] == (90, 120)


def test_predict_tiled_pastes_masks_into_full_image_coordinates():
    image = _image_with_square()
    merged = predict_tiled(BrightSquareDetector(masks=True).eval(), image, (3, 2), 0.25, 0.25, 100)
    assert merged["masks"].shape == (1, 1, 90, 120)
    assert torch.equal(merged["masks"][0, 0] > 0.5, image[0] > 0.5)


def test_predict_tiled_without_a_grid_looks_at_the_full_image_only():
    model = BrightSquareDetector().eval()
    merged = predict_tiled(model, _image_with_square(), None, 0.25, 0.25, 100)
    assert model.calls == [[(90, 120)]]
    assert merged["boxes"].tolist() == [[30.0, 10.0, 60.0, 30.0]]
