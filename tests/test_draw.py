"""Predictions drawn on images (serving/draw.py) and ``visionsweep predict --draw``: checked pixel by pixel where the
geometry is known, end to end on tiny packages otherwise."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from serving.draw import (
    GROUND_TRUTH_COLOUR,
    MASK_ALPHA,
    caption_lines,
    class_colour,
    draw_ground_truth,
    draw_response,
    drawing_names,
)
from tests.conftest import make_detection_package

LABELS = ["cat", "dog"]
# a box from 20 % to 60 % across and 20 % to 80 % down a 200 x 100 image: x 40..119, y 20..79 in pixels
BOX = {"topX": 0.2, "topY": 0.2, "bottomX": 0.6, "bottomY": 0.8}


def test_a_box_outline_has_its_class_colour_and_nothing_else_does():
    blank = Image.new("RGB", (200, 100))
    im = draw_response(blank, {"boxes": [{"box": BOX, "label": "dog", "score": 0.9}]}, LABELS, min_side=0)
    dog = class_colour("dog", LABELS)
    assert im.size == (200, 100) and dog != class_colour("cat", LABELS)
    for xy in [(80, 79), (119, 50), (40, 60), (110, 79)]:  # bottom edge, right edge, left edge, a corner
        assert im.getpixel(xy) == dog, xy
    for xy in [(80, 50), (60, 40), (100, 70),  # inside the box: a detection is not filled
               (180, 90), (10, 90), (150, 50), (80, 95)]:  # away from it (the score tag is above the top-left)
        assert im.getpixel(xy) == (0, 0, 0), xy
    assert blank.getpixel((80, 79)) == (0, 0, 0)  # the input is not drawn on


def test_a_segmentation_mask_is_filled_semi_transparently_with_its_outline():
    square = [0.2, 0.2, 0.6, 0.2, 0.6, 0.8, 0.2, 0.8]
    grey = (100, 100, 100)
    im = draw_response(Image.new("RGB", (200, 100), grey),
                       {"boxes": [{"box": BOX, "label": "cat", "score": 0.8, "polygon": [square]}]},
                       LABELS, min_side=0)
    cat = class_colour("cat", LABELS)
    inside = im.getpixel((80, 50))
    expected = [round(MASK_ALPHA * c + (1 - MASK_ALPHA) * g) for c, g in zip(cat, grey)]
    assert all(abs(a - e) <= 2 for a, e in zip(inside, expected)), (inside, expected)
    assert im.getpixel((80, 79)) == cat  # the outline
    assert im.getpixel((180, 90)) == grey and im.getpixel((20, 50)) == grey  # outside the mask


def test_ground_truth_is_dashed_in_its_own_colour():
    im = draw_ground_truth(Image.new("RGB", (200, 200)), [{"label": "x", "topX": 0.1, "topY": 0.1,
                                                           "bottomX": 0.9, "bottomY": 0.9}])
    top_edge = [im.getpixel((x, 20)) for x in range(25, 175)]
    assert GROUND_TRUTH_COLOUR not in [class_colour(c, LABELS) for c in LABELS]
    assert top_edge.count(GROUND_TRUTH_COLOUR) > 40 and top_edge.count((0, 0, 0)) > 40  # dashes and gaps
    assert im.getpixel((100, 100)) == (0, 0, 0)
    # an instance's ground truth is its polygon, dashed the same way
    tri = draw_ground_truth(Image.new("RGB", (200, 200)), [{"label": "x", "isCrowd": False,
                                                            "polygon": [[0.1, 0.1, 0.9, 0.1, 0.1, 0.9]]}])
    assert [tri.getpixel((x, 20)) for x in range(25, 175)].count(GROUND_TRUTH_COLOUR) > 40
    assert tri.getpixel((150, 150)) == (0, 0, 0)  # beyond the hypotenuse: nothing


def test_classification_captions_and_small_images_scaled_up():
    response = {"probs": [0.1, 0.62, 0.28, 0.7], "labels": ["a", "b", "c", "d"]}
    assert caption_lines(response) == ["d 0.70", "b 0.62", "c 0.28"]
    assert caption_lines(response, multilabel=True) == ["d 0.70", "b 0.62"]
    assert caption_lines({"probs": [0.1, 0.2], "labels": ["a", "b"]}, multilabel=True) == ["no label >= 0.5"]
    tiny = Image.new("RGB", (28, 28), (128, 128, 128))
    im = draw_response(tiny, response)
    assert im.size == (256, 256)  # 28 px has no room for text
    assert im.getpixel((250, 250)) == (128, 128, 128) and im.getpixel((2, 2)) != (128, 128, 128)
    with pytest.raises(ValueError, match="expected a §15 response with 'probs'"):
        draw_response(tiny, {"predictions": []})


def test_drawing_names_keep_stems_and_never_collide():
    assert drawing_names(["a/cat.jpg", "b/cat.png", "dog.jpeg", "noext"]) == ["cat.png", "cat-2.png", "dog.png",
                                                                             "noext.png"]


def test_predict_draw_writes_one_png_per_image_and_keeps_stdout_json(tmp_path, classifier, sample, capfd):
    from visionsweep.cli import main  # in-process: the CLI's subprocess start-up is covered by tests/test_cli.py

    images = [str(sample / "images" / f"test_000{i}.png") for i in range(2)]
    out = tmp_path / "drawn"
    code = main(["predict", str(classifier), *images, "--draw", str(out), "--device", "cpu"])
    r = capfd.readouterr()
    assert code == 0, r.err
    responses = json.loads(r.out)  # stdout is the JSON alone
    assert len(responses) == 2 and responses[0]["labels"] == ["a", "b", "c"]
    assert [r["filename"] for r in responses] == images  # each response names its image
    assert f"drew 2 images to {out}" in r.err
    assert sorted(p.name for p in out.iterdir()) == ["test_0000.png", "test_0001.png"]
    with Image.open(out / "test_0000.png") as im:
        assert im.format == "PNG" and im.size == (256, 256)


def test_predict_draw_segmentation_in_process(tmp_path, capfd):
    from visionsweep.cli import main

    pkg = make_detection_package(tmp_path, "maskrcnn_resnet18_fpn", "image_instance_segmentation")
    img = tmp_path / "shape.png"
    im = Image.new("RGB", (64, 64), (20, 20, 20))
    im.paste((230, 230, 230), (16, 16, 48, 48))
    im.save(img)
    code = main(["predict", str(pkg), str(img), "--device", "cpu", "--draw", str(tmp_path / "out"),
                 "--setting", "box_score_threshold=0", "--setting", "box_detections_per_img=3"])
    captured = capfd.readouterr()
    assert code == 0, captured.err
    (response,) = json.loads(captured.out)
    assert response["boxes"] and all("polygon" in b for b in response["boxes"])
    drawn = Image.open(tmp_path / "out" / "shape.png").convert("RGB")
    assert drawn.size == (256, 256)
    colours = {class_colour(b["label"], ["cat", "dog"]) for b in response["boxes"]}
    assert colours & set(drawn.getdata())  # the boxes' outlines are there, in their class colours
