"""The best model on the validation images (scheduler/predictions.py): RUN/predictions/ from a run folder built by
hand (a tiny package as best/, data/valid.jsonl), then the report's HTML fragment parsed back."""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image

from scheduler.predictions import DIR, FILE, predict_after_sweep, predictions_section, write_predictions
from serving.draw import GROUND_TRUTH_COLOUR
from tests.conftest import make_detection_package


def _run(tmp_path: Path, package: Path, lines: list[dict], classes: list[str]) -> Path:
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    shutil.copytree(package, run / "best")
    (run / "data" / "valid.jsonl").write_text("".join(json.dumps({**ln, "source": f"v:{i}"}) + "\n"
                                                      for i, ln in enumerate(lines, 1)))
    (run / "data" / "summary.json").write_text(json.dumps({"classes": classes}))
    return run


class _Fragment(HTMLParser):
    """Ids, <img> sources and the body cells of the first table, as texts per row."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.imgs: list[str] = []
        self.rows: list[list[str]] = []
        self.tables = 0
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append(a.get("src") or "")
        elif tag == "table":
            self.tables += 1
        elif tag == "tbody" and self.tables == 1:
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag in ("td", "th") and self._in_body:
            self.rows[-1].append("")

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False

    def handle_data(self, data):
        if self._in_body and self.rows and self.rows[-1]:
            self.rows[-1][-1] += data


def _parse(fragment: str) -> _Fragment:
    p = _Fragment()
    p.feed(fragment)
    return p


def _self_contained(fragment: str, parsed: _Fragment) -> None:
    assert "<script" not in fragment and "<link" not in fragment
    assert parsed.imgs and all(s.startswith("data:image/png;base64,") for s in parsed.imgs)


def test_classification_confusion_matrix_and_mistakes(tmp_path, classifier, sample):
    rng = random.Random(0)
    lines = [{"image_url": str(sample / "images" / f"test_{i:04d}.png"), "label": rng.choice("abc")}
             for i in range(10)]
    lines.append({"image_url": str(tmp_path / "gone.png"), "label": "a"})  # unreadable: left out, and said so
    run = _run(tmp_path, classifier, lines, ["a", "b", "c"])

    result = write_predictions(run)
    saved = json.loads((run / DIR / FILE).read_text())
    assert saved == result
    counts = saved["confusion_matrix"]["counts"]
    assert saved["images_used"] == 10 == sum(map(sum, counts)) and saved["validation_images"] == 11
    assert saved["skipped"] == 1 and "gone.png" in saved["skip_reason"]
    for i, c in enumerate("abc"):  # rows are the true classes
        assert sum(counts[i]) == sum(ln["label"] == c for ln in lines[:10])
    wrong = 10 - sum(counts[i][i] for i in range(3))
    assert len(saved["mistakes"]) == min(8, wrong)
    scores = [m["score"] for m in saved["mistakes"]]
    assert scores == sorted(scores, reverse=True)  # most confident first
    for m in saved["mistakes"]:
        assert m["predicted"] != m["true"] and (run / DIR / m["file"]).is_file()

    fragment = predictions_section(run)
    parsed = _parse(fragment)
    _self_contained(fragment, parsed)
    assert {"predictions", "confusion-matrix", "mistakes"} <= parsed.ids
    assert [r[0] for r in parsed.rows] == ["a", "b", "c"]
    assert sum(int(v) for r in parsed.rows for v in r[1:4]) == 10  # the cells; r[4] is the row total
    assert len(parsed.imgs) == len(saved["mistakes"])
    assert "10 of the 11 validation images" in fragment and "1 image(s) could not be read" in fragment

    # a cap: the first N images, and the page says so
    capped = write_predictions(run, max_images=6)
    assert capped["images_used"] == 6 == sum(map(sum, capped["confusion_matrix"]["counts"]))
    assert "the first 6 of the 11 validation images" in predictions_section(run)
    # a time limit: the batches started before it are counted, and the page says so
    timed = write_predictions(run, batch_size=4, time_budget_s=0)
    assert timed["timed_out"] and timed["images_used"] == 4 == sum(map(sum, timed["confusion_matrix"]["counts"]))
    assert "stopped at its time limit after 4 images" in predictions_section(run)


def test_multilabel_per_class_table(tmp_path, sample):
    from trainers.hyperparameters import resolve_hyperparameters
    from trainers.models.classifiers import build_model
    from trainers.package import save_package

    task = "image_classification_multilabel"
    h = resolve_hyperparameters(task, {"model_name": "resnet18", "validation_resize_size": 32,
                                       "validation_crop_size": 32}, {})
    pkg = save_package(tmp_path / "pkg", model=build_model("resnet18", 3, 32), task=task, classes=["a", "b", "c"],
                       hyperparameters=h, metrics={})
    labels = [["a"], ["a", "b"], [], ["c"], ["b", "c"], ["a", "b", "c"]]
    run = _run(tmp_path, pkg, [{"image_url": str(sample / "images" / f"test_{i:04d}.png"), "label": ls}
                               for i, ls in enumerate(labels)], ["a", "b", "c"])
    saved = write_predictions(run)
    assert saved["images_used"] == 6 and saved["threshold"] == 0.5
    for row in saved["per_class"]:  # every true label is a TP or an FN
        assert row["tp"] + row["fn"] == sum(row["class"] in ls for ls in labels)
    for m in saved["mistakes"]:
        assert m["wrong"]["kind"] in ("false positive", "false negative")
    fragment = predictions_section(run)
    parsed = _parse(fragment)
    assert "per-class" in parsed.ids and [r[0] for r in parsed.rows] == ["a", "b", "c"]
    if saved["mistakes"]:
        _self_contained(fragment, parsed)


def test_detection_samples_draw_ground_truth_and_predictions(tmp_path):
    pkg = make_detection_package(tmp_path, "fasterrcnn_resnet18_fpn", "image_object_detection")
    settings = json.loads((pkg / "settings.json").read_text())
    # random weights: every box scores low; keep 3 per image so there is something to draw
    (pkg / "settings.json").write_text(json.dumps({**settings, "box_score_threshold": 0.0,
                                                   "box_detections_per_image": 3}))
    lines = []
    for i in range(8):
        path = tmp_path / f"img{i}.png"
        im = Image.new("RGB", (64, 48), (30, 30, 30))
        im.paste((220, 220, 220), (16, 12, 40, 36))
        im.save(path)
        lines.append({"image_url": str(path), "label": [{"label": "cat", "topX": 0.25, "topY": 0.25,
                                                         "bottomX": 0.625, "bottomY": 0.75, "isCrowd": False}]})
    run = _run(tmp_path, pkg, lines, ["cat", "dog"])
    saved = write_predictions(run)
    assert saved["images_used"] == 6 == len(saved["samples"])  # spread over the 8: the first and the last
    assert saved["samples"][0]["image_url"].endswith("img0.png") and saved["samples"][-1]["image_url"].endswith(
        "img7.png")
    s = saved["samples"][0]
    assert s["ground_truth"] == 1 and s["predicted"] == 3
    drawn = Image.open(run / DIR / s["file"]).convert("RGB")
    assert min(drawn.size) == 256  # scaled up to have room for the tags
    assert GROUND_TRUTH_COLOUR in set(drawn.getdata())

    fragment = predictions_section(run)
    parsed = _parse(fragment)
    _self_contained(fragment, parsed)
    assert {"predictions", "samples", "legend"} <= parsed.ids and len(parsed.imgs) == 6
    assert "ground truth (dashed)" in fragment and re.search(r"predicted (cat|dog)", fragment)


def test_nothing_to_show_is_a_note(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert write_predictions(run) is None
    assert predictions_section(run).startswith('<p class="note" id="predictions">') and "no model package" in \
        predictions_section(run)
    (run / "best").mkdir()
    assert "not been written yet" in predictions_section(run)


def test_a_failure_after_a_sweep_is_a_warning_not_an_error(tmp_path, caplog, monkeypatch):
    from trainers.data.images import ImageStore

    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "model.json").write_text("{not json")
    (run / "data").mkdir()
    (run / "data" / "valid.jsonl").write_text('{"image_url": "x.png", "label": "a"}\n')
    monkeypatch.setenv("VISIONSWEEP_REPORT_PREDICTIONS", "0")  # switched off: not even tried
    with caplog.at_level(logging.WARNING):
        predict_after_sweep(run, ImageStore())
    assert not caplog.text
    monkeypatch.delenv("VISIONSWEEP_REPORT_PREDICTIONS")
    with caplog.at_level(logging.WARNING):
        predict_after_sweep(run, ImageStore())
    assert "validation predictions (RUN/predictions/) were not written" in caplog.text
    assert "not a model package" in caplog.text  # the model's own error, not the missing job's
    assert not (run / DIR).exists() and not list(run.glob(".predictions-*"))
