"""``visionsweep convert``: COCO / VOC / YOLO -> JSONL + MLTable that ``load_records`` reads back exactly.

Images are 40 x 30 so that x and y normalise by different sizes; expected numbers are worked out by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainers import hyperparameters as hp
from trainers.data.converters import convert
from trainers.data.tables import load_records
from trainers.errors import DataError, VisionsweepError
from trainers.polygons import polygons_to_mask

W, H = 40, 30


def image(path: Path, w: int = W, h: int = H) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (90, 120, 30)).save(path)
    return path


def lines(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "train.jsonl").read_text().splitlines()]


def boxes(rec):
    return [(b.label, b.top_x, b.top_y, b.bottom_x, b.bottom_y, b.is_crowd) for b in rec.label]


def same_boxes(rec, expected) -> bool:
    """Labels and crowd flags exactly, coordinates to the 6 decimals the converters write."""
    got = boxes(rec)
    return len(got) == len(expected) and all(
        (g[0], g[5]) == (e[0], e[5]) and g[1:5] == pytest.approx(e[1:5], abs=1e-6) for g, e in zip(got, expected))


def approx(*v):
    return pytest.approx(v, abs=1e-6)


def rect_mask(y0=6, y1=18, x0=10, x1=30) -> np.ndarray:
    m = np.zeros((H, W), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's list-of-counts RLE: run lengths of 0s and 1s over the column-major pixels, starting with 0s."""
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# --------------------------------------------------------------------------------------------- COCO


@pytest.fixture
def coco(tmp_path) -> Path:
    from pycocotools import mask as mask_utils

    for name in ("a.png", "b.png", "c.png"):
        image(tmp_path / "imgs" / name)
    rle = mask_utils.encode(np.asfortranarray(rect_mask()))
    rle["counts"] = rle["counts"].decode("ascii")
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "width": W, "height": H},
                   {"id": 2, "file_name": "b.png", "width": W, "height": H},
                   {"id": 3, "file_name": "c.png"}],  # no size: read from the image
        "categories": [{"id": 1, "name": "cat"}, {"id": 7, "name": "dog"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [4, 3, 20, 12],
             "segmentation": [[4, 3, 24, 3, 24, 15, 4, 15]]},
            {"id": 11, "image_id": 2, "category_id": 7, "iscrowd": 1, "bbox": [10, 6, 20, 12],
             "segmentation": rle},
            {"id": 12, "image_id": 2, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 10, 10],
             "segmentation": uncompressed_rle(rect_mask(0, 10, 0, 10))},
            # degenerate: no width (detection) and a 2-point polygon (segmentation)
            {"id": 13, "image_id": 1, "category_id": 7, "iscrowd": 0, "bbox": [30, 5, 0, 10],
             "segmentation": [[30, 5, 30, 15]]},
        ],
    }
    (tmp_path / "imgs" / "instances.json").write_text(json.dumps(doc))
    return tmp_path / "imgs" / "instances.json"


def test_coco_detection_boxes_crowd_and_negative(coco, tmp_path):
    out = tmp_path / "out"
    summary = convert("coco", coco, out)
    recs = load_records(str(out), hp.DETECTION, "label")
    assert [Path(r.image_url).name for r in recs] == ["a.png", "b.png", "c.png"]
    assert same_boxes(recs[0], [("cat", 0.1, 0.1, 0.6, 0.5, False)])
    assert same_boxes(recs[1], [("dog", 0.25, 0.2, 0.75, 0.6, True), ("cat", 0.0, 0.0, 0.25, 1 / 3, False)])
    assert recs[2].label == ()  # listed in images, no annotations: a negative
    assert (summary.images, summary.objects, summary.classes) == (3, 3, ["cat", "dog"])
    (warning,) = summary.warnings
    assert "degenerate" in warning and "annotation id 13" in warning
    # image_url stays relative to OUT and resolves to the original file; the size of c.png came from the file
    rows = lines(out)
    assert rows[0]["image_url"] == "../imgs/a.png"
    assert Path(recs[0].image_url) == (coco.parent / "a.png").resolve()
    assert rows[2]["image_details"] == {"format": "png", "width": W, "height": H}
    assert "read_json_lines" in (out / "MLTable").read_text()


def test_coco_segmentation_polygons_and_rle(coco, tmp_path):
    out = tmp_path / "out"
    summary = convert("coco", coco, out, task=hp.SEGMENTATION)
    recs = load_records(str(out), hp.SEGMENTATION, "label")
    (poly,) = recs[0].label
    assert poly.label == "cat" and poly.polygon == (approx(0.1, 0.1, 0.6, 0.1, 0.6, 0.5, 0.1, 0.5),)
    crowd, small = recs[1].label
    assert (crowd.label, crowd.is_crowd, small.is_crowd) == ("dog", True, False)
    # the compressed RLE became a polygon covering the rectangle it encoded
    assert iou(polygons_to_mask([list(p) for p in crowd.polygon], H, W), rect_mask().astype(bool)) > 0.9
    assert (crowd.top_x, crowd.top_y, crowd.bottom_x, crowd.bottom_y) == approx(0.25, 0.2, 0.75, 0.6)
    # so did the uncompressed (list counts) one
    small_mask = polygons_to_mask([list(p) for p in small.polygon], H, W)
    assert iou(small_mask, rect_mask(0, 10, 0, 10).astype(bool)) > 0.9
    assert any("at least 3 points" in w and "annotation id 13" in w for w in summary.warnings)


def test_coco_images_option_and_copy_images(coco, tmp_path):
    moved = tmp_path / "elsewhere"
    (coco.parent).rename(moved)
    out = tmp_path / "out"
    convert("coco", moved / "instances.json", out, images=str(moved), copy_images=True)
    rows = lines(out)
    assert [r["image_url"] for r in rows] == ["images/a.png", "images/b.png", "images/c.png"]
    assert (out / "images" / "b.png").is_file()
    recs = load_records(str(out), hp.DETECTION, "label")
    assert Path(recs[0].image_url) == (out / "images" / "a.png").resolve()


def test_coco_missing_images_are_skipped_with_a_warning(coco, tmp_path):
    (coco.parent / "b.png").unlink()
    summary = convert("coco", coco, tmp_path / "out")
    assert summary.images == 2 and any("not found" in w and "b.png" in w for w in summary.warnings)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["annotations"][0].update(category_id=99), "annotation id 10: category_id 99 is not in 'categories'"),
    (lambda d: d["annotations"][1].update(bbox=[1, 2, 3]), "annotation id 11: expected bbox to be [x, y, width"),
    (lambda d: d["annotations"][0].update(image_id=42), "annotation id 10: image_id 42 is not in 'images'"),
    (lambda d: d.pop("categories"), "expected a 'categories' list"),
    (lambda d: d["categories"][0].pop("name"), "categories[0]: expected an object with 'id' and a non-empty 'name'"),
])
def test_coco_malformed_names_file_and_annotation(coco, tmp_path, change, message):
    doc = json.loads(coco.read_text())
    change(doc)
    coco.write_text(json.dumps(doc))
    with pytest.raises(DataError) as e:
        convert("coco", coco, tmp_path / "out")
    assert str(e.value).startswith(f"{coco}: ") and message in str(e.value)


def test_coco_bad_rle_is_a_data_error(coco, tmp_path):
    doc = json.loads(coco.read_text())
    doc["annotations"][1]["segmentation"] = {"size": [H, W], "counts": 17}
    coco.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="annotation id 11: expected an RLE segmentation"):
        convert("coco", coco, tmp_path / "out", task=hp.SEGMENTATION)
    with pytest.raises(DataError, match="not valid JSON"):
        coco.write_text("{")
        convert("coco", coco, tmp_path / "out")


def test_options_that_do_not_apply_are_refused(coco, tmp_path):
    with pytest.raises(VisionsweepError, match="--names do not apply to coco"):
        convert("coco", coco, tmp_path / "out", names="x.txt")
    with pytest.raises(VisionsweepError, match="voc datasets convert to image_object_detection"):
        convert("voc", tmp_path, tmp_path / "out", task=hp.SEGMENTATION)


# ---------------------------------------------------------------------------------------------- VOC

VOC_XML = """<annotation>
  <filename>{file}</filename>{size}
  <object><name>person</name><difficult>0</difficult>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>{w}</xmax><ymax>{h}</ymax></bndbox></object>
  <object><name>car</name><difficult>1</difficult>
    <bndbox><xmin>5</xmin><ymin>4</ymin><xmax>24</xmax><ymax>18</ymax></bndbox></object>
</annotation>
"""


def voc_xml(file: str, w: int = W, h: int = H, size: bool = True) -> str:
    s = f"\n  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>" if size else ""
    return VOC_XML.format(file=file, size=s, w=w, h=h)


@pytest.fixture
def voc(tmp_path) -> Path:
    root = tmp_path / "VOC2007"
    image(root / "JPEGImages" / "000001.jpg")
    image(root / "JPEGImages" / "000002.jpg", 20, 10)
    (root / "Annotations").mkdir()
    (root / "Annotations" / "000001.xml").write_text(voc_xml("000001.jpg"))
    (root / "Annotations" / "000002.xml").write_text(voc_xml("000002.jpg", 20, 10, size=False))
    return root


def test_voc_one_based_pixels_and_difficult(voc, tmp_path):
    out = tmp_path / "out"
    summary = convert("voc", voc, out)
    a, b = load_records(str(out), hp.DETECTION, "label")
    # xmin=1..xmax=W (1-based, inclusive) is the whole image; (5, 4, 24, 18) -> (4/40, 3/30, 24/40, 18/30)
    assert same_boxes(a, [("person", 0.0, 0.0, 1.0, 1.0, False), ("car", 0.1, 0.1, 0.6, 0.6, True)])
    # no <size>: 20 x 10 read from the image; the car box is clipped to it
    assert same_boxes(b, [("person", 0.0, 0.0, 1.0, 1.0, False), ("car", 0.2, 0.3, 1.0, 1.0, True)])
    assert lines(out)[1]["image_details"] == {"format": "jpg", "width": 20, "height": 10}
    assert (summary.images, summary.objects, summary.classes) == (2, 4, ["car", "person"])


def test_voc_flat_folder_of_xml_next_to_images(tmp_path):
    image(tmp_path / "flat" / "x.png")
    (tmp_path / "flat" / "x.xml").write_text(voc_xml("stale-name.jpg"))  # <filename> is often wrong
    convert("voc", tmp_path / "flat", tmp_path / "out")
    (rec,) = load_records(str(tmp_path / "out"), hp.DETECTION, "label")
    assert Path(rec.image_url).name == "x.png" and len(rec.label) == 2


@pytest.mark.parametrize("xml, message", [
    (voc_xml("nope.jpg", size=False), "no <size> with a positive <width> and <height>, and image nope.jpg not found"),
    (voc_xml("000001.jpg").replace("<xmax>24</xmax>", "<xmax>big</xmax>"),
     "object 2: expected <bndbox><xmax> to be a pixel coordinate, but got 'big'"),
    (voc_xml("000001.jpg").replace("<name>car</name>", ""), "object 2: expected a non-empty <name>"),
    ("<annotation><filename>", "not valid XML"),
])
def test_voc_malformed_names_the_xml_file(voc, tmp_path, xml, message):
    bad = voc / "Annotations" / "000003.xml"
    bad.write_text(xml)
    with pytest.raises(DataError) as e:
        convert("voc", voc, tmp_path / "out")
    assert str(e.value).startswith(str(bad)) and message in str(e.value)


# --------------------------------------------------------------------------------------------- YOLO


@pytest.fixture
def yolo(tmp_path) -> Path:
    root = tmp_path / "yolo"
    image(root / "images" / "train" / "a.jpg")
    image(root / "images" / "val" / "a.jpg")  # same name, other split: a negative (no label file)
    image(root / "images" / "val" / "e.png")  # empty label file: a negative
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.4 0.2\n\n1 0.1 0.1 0.3 0.1 0.3 0.4\n")
    (root / "labels" / "val" / "e.txt").write_text("")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [cat, dog]\n")
    return root


def test_yolo_boxes_polygons_and_negatives(yolo, tmp_path):
    out = tmp_path / "out"
    summary = convert("yolo", yolo, out)
    a, va, e = load_records(str(out), hp.DETECTION, "label")
    assert a.image_url.endswith("train/a.jpg") and va.image_url.endswith("val/a.jpg")
    # box: centre (0.5, 0.5), size (0.4, 0.2); polygon -> its bounding box
    assert same_boxes(a, [("cat", 0.3, 0.4, 0.7, 0.6, False), ("dog", 0.1, 0.1, 0.3, 0.4, False)])
    assert va.label == () and e.label == ()
    assert (summary.images, summary.objects, summary.classes, summary.warnings) == (3, 2, ["cat", "dog"], [])


def test_yolo_segmentation_and_names_mapping(yolo, tmp_path):
    (yolo / "data.yaml").write_text("names: {0: kitten, 1: puppy}\n")
    out = tmp_path / "out"
    summary = convert("yolo", yolo, out, task=hp.SEGMENTATION)
    a = load_records(str(out), hp.SEGMENTATION, "label")[0]
    rect, poly = a.label
    assert rect.label == "kitten" and rect.polygon == (approx(0.3, 0.4, 0.7, 0.4, 0.7, 0.6, 0.3, 0.6),)
    assert poly.label == "puppy" and poly.polygon == (approx(0.1, 0.1, 0.3, 0.1, 0.3, 0.4),)
    assert any("rectangle polygons" in w and "a.txt:1" in w for w in summary.warnings)


def test_yolo_names_file_ids_and_copy_keeps_splits_apart(yolo, tmp_path):
    (yolo / "data.yaml").unlink()
    out = tmp_path / "out"
    convert("yolo", yolo, out, copy_images=True)
    assert [b[0] for b in boxes(load_records(str(out), hp.DETECTION, "label")[0])] == ["0", "1"]
    assert [r["image_url"] for r in lines(out)] == ["images/train/a.jpg", "images/val/a.jpg", "images/val/e.png"]
    names = tmp_path / "names.txt"
    names.write_text("bird\nfish\n")
    convert("yolo", yolo, out, names=str(names))
    assert [b[0] for b in boxes(load_records(str(out), hp.DETECTION, "label")[0])] == ["bird", "fish"]


@pytest.mark.parametrize("text, message", [
    ("0 0.5 0.5 0.4 0.2\n0 0.5 0.5 0.4\n", "a.txt:2: expected 'class cx cy w h' (5 fields)"),
    ("0 0.5 0.5 0.4 0.2 0.1\n", "a.txt:1: expected 'class cx cy w h' (5 fields) or a polygon"),
    ("2 0.5 0.5 0.4 0.2\n", "a.txt:1: class id '2' is not a valid class index (names has 2 classes: 0..1)"),
    ("0 0.5 x 0.4 0.2\n", "a.txt:1: expected numbers"),
])
def test_yolo_malformed_line_names_file_and_line(yolo, tmp_path, text, message):
    (yolo / "labels" / "train" / "a.txt").write_text(text)
    with pytest.raises(DataError) as e:
        convert("yolo", yolo, tmp_path / "out")
    assert str(e.value).startswith(str(yolo / "labels" / "train")) and message in str(e.value)


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_convert(voc, tmp_path, capsys):
    from visionsweep.cli import main

    out = tmp_path / "out"
    assert main(["convert", "voc", str(voc), str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote 2 images, 4 objects, 2 classes to {out / 'train.jsonl'}"
    assert len(load_records(str(out), hp.DETECTION, "label")) == 2
    (voc / "Annotations" / "000003.xml").write_text("<annotation><filename>")
    assert main(["convert", "voc", str(voc), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {voc / 'Annotations' / '000003.xml'}: not valid XML") and "Traceback" not in err
