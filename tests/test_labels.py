"""Label parsing per task (SPEC §2.3, §13 A1/A2, §14)."""

from __future__ import annotations

import pytest

from trainers.labels import Box, parse_detection, parse_multiclass, parse_multilabel, parse_segmentation


def test_multiclass():
    assert parse_multiclass("cat") == "cat"
    assert parse_multiclass(3) == "3"
    for bad in (["cat"], None, "", {"label": "cat"}, True):
        with pytest.raises(ValueError):
            parse_multiclass(bad)
    with pytest.raises(ValueError, match="image_classification_multilabel"):
        parse_multiclass(["cat", "dog"])


def test_multilabel():
    assert parse_multilabel(["cat", "dog"]) == ("cat", "dog")
    assert parse_multilabel([]) == ()
    with pytest.raises(ValueError, match="list of class names"):
        parse_multilabel("cat")
    with pytest.raises(ValueError, match="distinct"):
        parse_multilabel(["cat", "cat"])


def test_detection_accepts_one_object_or_a_list_with_string_numbers():
    one = parse_detection({"label": "can", "topX": "0.1", "topY": "0.2", "bottomX": "0.5", "bottomY": "0.9",
                           "isCrowd": "false"})
    assert one == (Box("can", 0.1, 0.2, 0.5, 0.9, False),)
    many = parse_detection([{"label": "can", "topX": 0.1, "topY": 0.2, "bottomX": 0.5, "bottomY": 0.9, "isCrowd": 1},
                            {"label": "milk", "topX": 0, "topY": 0, "bottomX": 1, "bottomY": 1}])
    assert many[0].is_crowd is True and many[1].label == "milk"
    assert parse_detection([]) == ()


@pytest.mark.parametrize("box,expected", [
    ({"label": "a", "topX": 0.5, "topY": 0, "bottomX": 0.1, "bottomY": 1}, "bottomX > topX"),
    ({"label": "a", "topX": 0, "topY": 0, "bottomX": 1.5, "bottomY": 1}, r"normalised to \[0, 1\]"),
    ({"label": "a", "topX": "x", "topY": 0, "bottomX": 1, "bottomY": 1}, "topX to be a number"),
    ({"label": "a", "topY": 0, "bottomX": 1, "bottomY": 1}, "missing 'topX'"),
    ({"label": "a", "topX": 0, "topY": 0, "bottomX": 1, "bottomY": 1, "isCrowd": "maybe"}, "isCrowd"),
    ({"label": "a", "topX": 0, "topY": 0, "bottomX": 1, "bottomY": 1, "score": 1}, "unknown box keys"),
    ("cat", "box object"),
])
def test_detection_errors(box, expected):
    with pytest.raises(ValueError, match=expected):
        parse_detection(box)


def test_segmentation_polygons_and_derived_box():
    (inst,) = parse_segmentation([{"label": "can", "isCrowd": 0, "bbox": "null",
                                   "polygon": [[0.1, 0.2, 0.5, 0.2, 0.5, 0.6, 0.1, 0.6]]}])
    assert (inst.top_x, inst.top_y, inst.bottom_x, inst.bottom_y) == (0.1, 0.2, 0.5, 0.6)
    assert inst.polygon == ((0.1, 0.2, 0.5, 0.2, 0.5, 0.6, 0.1, 0.6),)
    with pytest.raises(ValueError, match="even number"):
        parse_segmentation([{"label": "can", "polygon": [[0.1, 0.2, 0.5]]}])
    with pytest.raises(ValueError, match="list of"):
        parse_segmentation([{"label": "can", "polygon": [0.1, 0.2]}])
