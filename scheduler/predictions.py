"""The best model on the validation images, for the sweep report: what it gets right and wrong, in pictures.

A leaderboard's one number does not say *which* classes a model confuses or what its boxes look like. After a
sweep, :func:`write_predictions` writes ``RUN/predictions/`` from what the best model predicted on the images of
``data/valid.jsonl``, taken from the evaluation the best checkpoint was saved at: the trial already predicted
them, and kept its per-image outputs with the checkpoint (``best/validation_outputs.npz``,
``trainers.validation_outputs``), so no model is loaded and nothing is predicted twice; only the few images the
page shows are read. A run folder written before evaluations kept their outputs has no such file: then (and only
then, said in a log line) the ``best/`` package predicts the images again (``serving.predictor.Predictor``, on CPU:
the controller's machine need not have a GPU). ``RUN/predictions/`` holds:

* ``predictions.json``: the numbers (below), so the report can be rebuilt from files without the model;
* PNG thumbnails: ``mistake_<k>.png`` (classification) or ``sample_<k>.png`` (detection, segmentation).

What is computed, per task:

* multi-class: the confusion matrix (rows: true class, columns: predicted class) over the first ``MAX_IMAGES``
  validation images (the split is already random), and the ``MISTAKES_SHOWN`` most confident mistakes;
* multi-label: per class TP / FP / FN at the 0.5 threshold, and the most confident mistakes (an image's mistake
  is its most confident wrong decision: a label above the threshold it does not have, or one below it it has);
* detection and instance segmentation: ``SAMPLES_SHOWN`` validation images, spread over the set, with the ground
  truth drawn dashed in green and the predictions solid in their class colours (``serving.draw``).

:func:`predictions_section` renders ``predictions.json`` as a self-contained HTML fragment for the report (the
images inline as ``data:`` URIs). The cost is bounded: at most ``MAX_IMAGES`` images and, when the model predicts
again, ``TIME_BUDGET_S`` seconds of inference (the page says when either cut the set short), and
``VISIONSWEEP_REPORT_PREDICTIONS=0`` switches it off. Images are read as the trials read them
(``trainers.data.images.ImageStore``: local paths, ``az://``, ``s3://`` ..., through the node cache);
``data/valid.jsonl`` holds resolved URLs.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from trainers.errors import DataError, VisionsweepError
from trainers.validation_outputs import MAX_IMAGES, SAMPLES_SHOWN, sample_indices  # noqa: F401 - MAX_IMAGES: API

DIR = "predictions"
FILE = "predictions.json"
MISTAKES_SHOWN = 8
BATCH_SIZE = 16
THUMB_SIDE = 160  # classification thumbnails: at most this many pixels a side (small images scaled up to ~96)
SAMPLE_SIDE = 512  # detection samples: scaled down to at most this many pixels a side before drawing
THRESHOLD = 0.5  # multi-label decision threshold, as in trainers.metrics
# The fallback's inference stops taking new batches after this many seconds: the controller's CPU predicts, and
# 500 images of a large ViT there would take minutes; the page then says how many images it counted.
TIME_BUDGET_S = 120.0
OFF_ENV = "VISIONSWEEP_REPORT_PREDICTIONS"  # "0": a sweep does not write RUN/predictions/

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- computing

def predict_after_sweep(run_dir: Path, images=None) -> None:
    """:func:`write_predictions` at the end of a sweep (``scheduler.finish.finish_run``), reading images as the
    job's trials did (``images``: the job's ``ImageStore``); any failure is a logged warning: the predictions are a
    view of the result, like the report, and must never fail a finished sweep."""
    if os.environ.get(OFF_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        log.info("%s=%s: the best model's validation predictions are not written", OFF_ENV, os.environ[OFF_ENV])
        return
    try:
        write_predictions(run_dir, images)
    except Exception as e:
        log.warning("the best model's validation predictions (RUN/%s/) were not written: %s", DIR, e)


def write_predictions(run_dir: str | Path, store=None, device: str = "cpu", max_images: int = MAX_IMAGES,
                      batch_size: int = BATCH_SIZE, time_budget_s: float = TIME_BUDGET_S,
                      from_evaluation: bool = True) -> dict[str, Any] | None:
    """Write ``RUN/predictions/`` (replacing an earlier one) from the best model's predictions on the validation
    images; returns what ``predictions.json`` holds, or ``None`` when the run has no best model or no validation
    images. ``store``: the job's ``ImageStore`` (storage options, cache); default: local files and storage
    credentials from the environment; images are read only for the pictures.

    The predictions are those of the evaluation the best checkpoint was saved at (``best/validation_outputs.npz``,
    ``trainers.validation_outputs``; ``predictions.json`` ``source: evaluation``): no model is loaded. Where
    ``best/`` has no such file (a run folder written before evaluations kept their outputs), or with
    ``from_evaluation=False``, ``RUN/best`` predicts the images again on ``device`` (``source: inference``), and
    after ``time_budget_s`` seconds of inference no new batch is started."""
    from trainers.data.images import ImageStore

    run = Path(run_dir)
    if not (run / "best" / "model.json").is_file() and not (run / "best" / "artifacts").is_dir():
        return None
    records = _read_valid(run)
    if not records:
        return None
    reader = _Reader(store or ImageStore(), run)
    source = (_evaluated(run, records) if from_evaluation else None) or \
        _Inference(run, device, reader, batch_size, time_budget_s)
    tmp = Path(tempfile.mkdtemp(prefix=".predictions-", dir=run))
    try:
        # the task names its page: a confusion matrix, per-label scores, or drawn samples
        result = REPORTS[source.page](source, records, reader, tmp, max_images)
        result = {"task": source.task, "classes": list(source.labels), "validation_images": len(records),
                  **source.facts(), **result}
        (tmp / FILE).write_text(json.dumps(result, indent=2) + "\n")
        out = run / DIR
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _read_valid(run: Path) -> list[dict[str, Any]]:
    path = run / "data" / "valid.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise VisionsweepError(f"{path}:{n}: not a JSON line ({e.msg}); expected "
                                   "{\"image_url\": ..., \"label\": ...}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("image_url"), str) or "label" not in obj:
            raise VisionsweepError(f"{path}:{n}: expected an object with an 'image_url' string and a 'label'")
        out.append(obj)
    return out


def run_image_url(url: str, run: Path) -> str:
    """``data/*.jsonl`` hold resolved URLs (absolute paths or storage URLs); a relative path that is not there from
    here is taken relative to the run folder (a run folder moved with its images)."""
    from trainers.data.urls import is_remote

    if is_remote(url) or Path(url).is_absolute() or Path(url).exists():
        return url
    return str(run / url)


class _Reader:
    """Reads the validation images, skipping (and counting) those that cannot be read: a report is drawn from what
    can be seen, and says how many it left out and why."""

    def __init__(self, store, run: Path, deadline: float = float("inf")):
        self.store, self.run, self.deadline = store, run, deadline
        self.timed_out = False
        self.skipped = 0
        self.first_error: str | None = None

    def url(self, url: str) -> str:
        return run_image_url(url, self.run)

    def image(self, record: dict, left_out: bool = True):
        """One record's image, or None where it cannot be read (counted as left out when ``left_out``)."""
        try:
            return self.store.image(self.url(record["image_url"]))
        except DataError as e:
            if left_out:
                self.skipped += 1
            self.first_error = self.first_error or str(e)
            return None

    def batches(self, records: Sequence[dict], size: int) -> Iterator[tuple[list[dict], list]]:
        for i in range(0, len(records), size):
            if i and time.monotonic() > self.deadline:  # at least one batch: the page has something to show
                self.timed_out = True
                return
            ok, images = [], []
            for r in records[i:i + size]:
                im = self.image(r)
                if im is not None:
                    ok.append(r)
                    images.append(im)
            if ok:
                yield ok, images

    def facts(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "skip_reason": self.first_error, "timed_out": self.timed_out}


# --- where the predictions come from: the best checkpoint's evaluation, or (an older run folder) a new pass

def _evaluated(run: Path, records: Sequence[dict]) -> "_Evaluation | None":
    """The best checkpoint's own evaluation outputs, or None (logged: the caller predicts again) where ``best/``
    has none or they are not of this run folder's validation images."""
    from trainers.validation_outputs import FILE as OUTPUTS
    from trainers.validation_outputs import read_outputs

    best = run / "best"
    try:
        outputs = read_outputs(best)
    except ValueError as e:
        log.warning("%s; the best model predicts the validation images again", e)
        return None
    if outputs is None:
        log.info("RUN/best/%s is missing (a run folder written before evaluations kept their outputs): the best "
                 "model predicts the validation images again for the report", OUTPUTS)
        return None
    urls, idx = outputs["image_urls"], outputs["indices"]
    if len(urls) != len(idx) or any(int(i) >= len(records) or records[int(i)]["image_url"] != str(u)
                                    for i, u in zip(idx, urls)):
        log.warning("RUN/best/%s holds other images than RUN/data/valid.jsonl: the best model predicts the "
                    "validation images again for the report", OUTPUTS)
        return None
    return _Evaluation(outputs, best)


class _Evaluation:
    """Responses in the service's shape (``serving.predictor``) from what the best checkpoint's evaluation predicted
    (``trainers.validation_outputs``): no model, no inference, no torch; only the images it kept."""

    def __init__(self, outputs: dict[str, Any], best: Path):
        self.outputs = outputs
        self.task, self.page = str(outputs["task"]), str(outputs["page"])
        self.labels = [str(c) for c in outputs["classes"]]
        self.settings = json.loads((best / "settings.json").read_text()) if (best / "settings.json").is_file() else {}
        self.position = {int(i): k for k, i in enumerate(outputs["indices"])}
        if "counts" in outputs:  # detection: image k's detections are rows offsets[k]:offsets[k + 1]
            self.offsets = [0, *(int(c) for c in outputs["counts"].cumsum())]

    def facts(self) -> dict[str, Any]:
        return {"source": "evaluation", "epoch": int(self.outputs["epoch"])}

    def __call__(self, records: Sequence[dict], picks, at_most: int = BATCH_SIZE):
        for i in picks:
            k = self.position.get(int(i))
            if k is not None:
                yield records[i], None, self._response(k)

    def _response(self, k: int) -> dict[str, Any]:
        o = self.outputs
        if "probabilities" in o:
            return {"probs": o["probabilities"][k].tolist(), "labels": list(self.labels)}
        from trainers.detection_metrics import decode_masks
        from trainers.polygons import mask_to_polygons

        a, b = self.offsets[k], self.offsets[k + 1]
        height, width = (int(v) for v in o["sizes"][k])
        thr = float(self.settings.get("box_score_threshold", 0.0))
        boxes = []
        for j in sorted(range(a, b), key=lambda j: -float(o["scores"][j])):  # best first, as the service answers
            label, score = int(o["labels"][j]), float(o["scores"][j])
            if score < thr or not 1 <= label <= len(self.labels):
                continue
            x0, y0, x1, y1 = (float(v) for v in o["boxes"][j])
            item: dict[str, Any] = {"box": {"topX": _unit(x0 / width), "topY": _unit(y0 / height),
                                            "bottomX": _unit(x1 / width), "bottomY": _unit(y1 / height)},
                                    "label": self.labels[label - 1], "score": round(score, 6)}
            if "masks_rle" in o:  # the evaluation's binarised mask, outlined as the service outlines one
                mask = decode_masks([{"size": [height, width], "counts": str(o["masks_rle"][j])}], height, width)[0]
                item["polygon"] = mask_to_polygons(mask.astype("float32"), 0.5,
                                                   int(self.settings.get("max_number_of_polygon_points", 100)))
            boxes.append(item)
        return {"boxes": boxes}


def _unit(v: float) -> float:
    return round(min(1.0, max(0.0, v)), 6)


class _Inference:
    """The fallback: ``RUN/best`` predicts the images again (``serving.predictor.Predictor``, on CPU by default: the
    controller's machine need not have a GPU), in batches, until the time budget is spent."""

    def __init__(self, run: Path, device: str, reader: _Reader, batch_size: int, time_budget_s: float):
        from serving.predictor import Predictor

        self.predictor = Predictor(str(run / "best"), device=device)
        self.labels, self.settings = self.predictor.labels, self.predictor.pkg.settings
        self.task, self.page = self.predictor.pkg.task, self.predictor.task.report_predictions
        self.reader, self.batch_size = reader, batch_size
        reader.deadline = time.monotonic() + time_budget_s

    def facts(self) -> dict[str, Any]:
        return {"source": "inference"}

    def __call__(self, records: Sequence[dict], picks, at_most: int = BATCH_SIZE):
        for batch, images in self.reader.batches([records[i] for i in picks], min(self.batch_size, at_most)):
            yield from zip(batch, images, self.predictor.predict_images(images))


# --- the pages

def _png(im, path: Path) -> str:
    im.save(path, format="PNG", optimize=True)
    return path.name


def _thumbnail(image):
    from serving.draw import canvas

    im = canvas(image, 96)
    im.thumbnail((THUMB_SIDE, THUMB_SIDE))
    return im


def _keep_worst(mistakes: list[dict], n: int) -> list[dict]:
    return sorted(mistakes, key=lambda m: -m["confidence"])[:n]


def _first(records: Sequence[dict], max_images: int) -> range:
    return range(min(len(records), max_images))


def _multiclass(source, records, reader: _Reader, out: Path, max_images: int) -> dict[str, Any]:
    classes = list(source.labels)
    index = {c: i for i, c in enumerate(classes)}
    counts = [[0] * len(classes) for _ in classes]
    unknown, mistakes = 0, []
    for r, im, resp in source(records, _first(records, max_images)):
        true = str(r["label"])
        if true not in index:  # a class the model was not trained on: nothing to put in the matrix
            unknown += 1
            continue
        probs = resp["probs"]
        pred = max(range(len(probs)), key=probs.__getitem__)
        counts[index[true]][pred] += 1
        if pred != index[true]:
            mistakes.append({"image_url": r["image_url"], "true": true, "predicted": classes[pred],
                             "score": round(float(probs[pred]), 4),
                             "true_score": round(float(probs[index[true]]), 4),
                             "confidence": float(probs[pred]), "_record": r,
                             "_image": None if im is None else _thumbnail(im)})
            if len(mistakes) > 4 * MISTAKES_SHOWN:
                mistakes = _keep_worst(mistakes, MISTAKES_SHOWN)
    n = sum(map(sum, counts))
    return {"max_images": max_images, "images_used": n, **reader.facts(), "unknown_labels": unknown,
            "accuracy": round(sum(counts[i][i] for i in range(len(classes))) / n, 4) if n else None,
            "confusion_matrix": {"rows": "true class", "columns": "predicted class", "counts": counts},
            "mistakes": _save_mistakes(_keep_worst(mistakes, MISTAKES_SHOWN), out, reader)}


def _multilabel(source, records, reader: _Reader, out: Path, max_images: int) -> dict[str, Any]:
    classes = list(source.labels)
    table = {c: {"tp": 0, "fp": 0, "fn": 0} for c in classes}
    n, mistakes = 0, []
    for r, im, resp in source(records, _first(records, max_images)):
        true = set(r["label"] if isinstance(r["label"], list) else [r["label"]])
        n += 1
        worst = None
        for c, p in zip(classes, resp["probs"]):
            predicted = p >= THRESHOLD
            kind = ("tp" if c in true else "fp") if predicted else ("fn" if c in true else None)
            if kind:
                table[c][kind] += 1
            if kind in ("fp", "fn"):
                conf = p if kind == "fp" else 1.0 - p  # how sure the model was of its wrong decision
                if worst is None or conf > worst[0]:
                    worst = (conf, c, kind, p)
        if worst is not None:
            conf, c, kind, p = worst
            mistakes.append({"image_url": r["image_url"], "true": sorted(true),
                             "predicted": [[lab, round(float(s), 4)] for lab, s in
                                           sorted(zip(classes, resp["probs"]), key=lambda x: -x[1])
                                           if s >= THRESHOLD],
                             "wrong": {"label": c, "kind": "false positive" if kind == "fp" else
                                       "false negative", "score": round(float(p), 4)},
                             "confidence": float(conf), "_record": r,
                             "_image": None if im is None else _thumbnail(im)})
            if len(mistakes) > 4 * MISTAKES_SHOWN:
                mistakes = _keep_worst(mistakes, MISTAKES_SHOWN)
    per_class = []
    for c in classes:
        t = table[c]
        per_class.append({"class": c, **t,
                          "precision": round(t["tp"] / (t["tp"] + t["fp"]), 4) if t["tp"] + t["fp"] else None,
                          "recall": round(t["tp"] / (t["tp"] + t["fn"]), 4) if t["tp"] + t["fn"] else None})
    return {"max_images": max_images, "images_used": n, **reader.facts(), "threshold": THRESHOLD,
            "per_class": per_class, "mistakes": _save_mistakes(_keep_worst(mistakes, MISTAKES_SHOWN), out, reader)}


def _save_mistakes(mistakes: list[dict], out: Path, reader: _Reader) -> list[dict]:
    """The mistakes with their thumbnails; predictions from the evaluation read only these few images (one that
    cannot be read now stays in the counts and is shown without its picture)."""
    saved = []
    for k, m in enumerate(mistakes, 1):
        im, record = m.pop("_image"), m.pop("_record")
        if im is None:
            im = reader.image(record, left_out=False)
            im = None if im is None else _thumbnail(im)
        m["confidence"] = round(m["confidence"], 4)
        saved.append({"file": None if im is None else _png(im, out / f"mistake_{k}.png"), **m})
    return saved


def _samples(source, records, reader: _Reader, out: Path, max_images: int) -> dict[str, Any]:
    """Up to ``SAMPLES_SHOWN`` images spread evenly over the validation set, ground truth and predictions drawn
    (``max_images`` does not apply: a page of drawn samples is short whatever the set's size)."""
    from serving.draw import canvas, draw_ground_truth, draw_response

    samples = []
    for r, im, resp in source(records, sample_indices(len(records), SAMPLES_SHOWN), at_most=2):
        im = reader.image(r) if im is None else im
        if im is None:
            continue
        small = im.copy()
        small.thumbnail((SAMPLE_SIDE, SAMPLE_SIDE))
        drawn = draw_ground_truth(canvas(small), r["label"])
        drawn = draw_response(small, resp, source.labels, im=drawn)
        gt = r["label"] if isinstance(r["label"], list) else [r["label"]]
        k = len(samples) + 1
        samples.append({"file": _png(drawn, out / f"sample_{k}.png"), "image_url": r["image_url"],
                        "ground_truth": len(gt), "predicted": len(resp["boxes"]),
                        "predicted_labels": sorted({b["label"] for b in resp["boxes"]})})
    return {"images_used": len(samples), **reader.facts(),
            "box_score_threshold": source.settings.get("box_score_threshold"), "samples": samples}


# the pages of validation predictions, by the name a task gives (``Task.report_predictions``)
REPORTS = {"confusion": _multiclass, "per_label": _multilabel, "samples": _samples}


# ----------------------------------------------------------------------------------------------- rendering

_STYLE = """<style>
.pred-note{color:#555}
table.pred-confusion{border-collapse:collapse;font-size:13px;margin:8px 0}
table.pred-confusion th,table.pred-confusion td{border:1px solid #ddd;padding:3px 7px;text-align:right}
table.pred-confusion th.pred-corner{font-weight:normal;color:#555;text-align:left}
table.pred-confusion td.pred-diag{font-weight:bold;outline:2px solid #2a7}
.pred-gallery{display:flex;flex-wrap:wrap;gap:12px;margin:8px 0}
.pred-gallery figure{margin:0;font-size:12px;width:min-content}
.pred-gallery figcaption{margin-top:3px;line-height:1.35}
.pred-swatch{display:inline-block;width:22px;height:0;border-top:3px solid;vertical-align:middle;margin:0 4px}
</style>"""


def predictions_section(run_dir: str | Path) -> str:
    """The report's predictions section: an HTML fragment, self-contained (its images inline as ``data:`` URIs, no
    script, no external file), from ``RUN/predictions/``. Always HTML; where there is nothing to show (no best
    model, predictions not written yet, an unreadable file), a ``<p class="note" id="predictions">``."""
    run = Path(run_dir)
    path = run / DIR / FILE
    if not path.is_file():
        why = ("no model package (best/): no trial finished with a checkpoint" if not (run / "best").is_dir()
               else "the best model's validation predictions have not been written yet (RUN/predictions/)")
        return _note(why)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return _note(f"{path}: unreadable ({e})")
    if not data.get("images_used"):
        return _note(f"no validation image could be predicted{_skip_text(data)}")
    parts = ['<section id="predictions" class="pred">', _STYLE, f'<p class="pred-note">{_scope(data)}</p>']
    try:
        if "confusion_matrix" in data:
            parts += ["<h3>Confusion matrix</h3>", _confusion(data)]
        if "per_class" in data:
            parts += [f"<h3>Per class (threshold {data.get('threshold', THRESHOLD):g})</h3>", _per_class(data)]
        if "mistakes" in data:
            parts += ["<h3>Most confident mistakes</h3>", _mistakes(run, data)]
        if "samples" in data:
            parts += ["<h3>Validation images</h3>", _legend(data), _gallery(run, data)]
    except (KeyError, TypeError, ValueError, IndexError) as e:
        return _note(f"{path}: not a predictions file this version reads ({type(e).__name__}: {e})")
    parts.append("</section>")
    return "\n".join(parts)


def _note(text: str) -> str:
    return f'<p class="note" id="predictions">{html.escape(text)}</p>'


def _skip_text(data: dict) -> str:
    n = data.get("skipped") or 0
    if not n:
        return ""
    reason = f" (first: {data['skip_reason']})" if data.get("skip_reason") else ""
    return f"; {n} image(s) could not be read and were left out{reason}"


def _scope(data: dict) -> str:
    used, total = data["images_used"], data.get("validation_images", data["images_used"])
    if "samples" in data:
        what = (f"the {total} validation image(s)" if used == total and not data.get("skipped") else
                f"{used} of the {total} validation images, spread over the set")
    elif total > data.get("max_images", total):
        what = (f"the first {data['max_images']} of the {total} validation images (at most {data['max_images']} "
                f"are {'counted' if data.get('source') == 'evaluation' else 'predicted'})")
    else:
        what = f"{used} of the {total} validation images"
    if data.get("timed_out"):
        what += f" (inference stopped at its time limit after {used} images)"
    extra = f"; accuracy {data['accuracy']:.3f}" if isinstance(data.get("accuracy"), (int, float)) else ""
    if data.get("unknown_labels"):
        extra += f"; {data['unknown_labels']} image(s) with a class the model does not know were left out"
    when = f" at its evaluation after epoch {data['epoch']}" if data.get("source") == "evaluation" else ""
    return html.escape(f"The best model (best/){when} on {what}{extra}{_skip_text(data)}.")


def _confusion(data: dict) -> str:
    classes, counts = data["classes"], data["confusion_matrix"]["counts"]
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in classes)
    rows = []
    for i, (c, row) in enumerate(zip(classes, counts)):
        total = sum(row)
        cells = []
        for j, v in enumerate(row):
            shade = v / total if total else 0.0  # the row's share: a class's errors stand out whatever its size
            colour = f"rgba(42,119,170,{shade * 0.8:.2f})" if i == j else f"rgba(214,39,40,{shade * 0.8:.2f})"
            cls = ' class="pred-diag"' if i == j else ""
            ink = ";color:#bbb" if v == 0 else ""
            cells.append(f'<td{cls} style="background:{colour}{ink}" title="true {esc(c)}, predicted '
                         f'{esc(classes[j])}: {v}">{v}</td>')
        rows.append(f"<tr><th>{esc(c)}</th>{''.join(cells)}<td>{total}</td></tr>")
    return (f'<table class="pred-confusion" id="confusion-matrix"><thead><tr>'
            f'<th class="pred-corner">true \\ predicted</th>{head}<th>total</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _per_class(data: dict) -> str:
    esc = html.escape
    fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    rows = "".join(f"<tr><th>{esc(r['class'])}</th><td>{r['tp']}</td><td>{r['fp']}</td><td>{r['fn']}</td>"
                   f"<td>{fmt(r['precision'])}</td><td>{fmt(r['recall'])}</td></tr>" for r in data["per_class"])
    return ('<table class="pred-confusion" id="per-class"><thead><tr><th class="pred-corner">class</th>'
            '<th>TP</th><th>FP</th><th>FN</th><th>precision</th><th>recall</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>")


def _img(run: Path, name: str, alt: str) -> str:
    """An inline PNG (``data:`` URI): the report stays one file. A name that is not a plain file name in
    RUN/predictions/ is refused (the JSON is data, not a path to follow)."""
    if not name or Path(name).name != name:
        raise ValueError(f"expected a file name in {DIR}/, got {name!r}")
    data = base64.b64encode((run / DIR / name).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _mistakes(run: Path, data: dict) -> str:
    esc = html.escape
    if not data["mistakes"]:
        return '<p class="pred-note">None: every image predicted was right.</p>'
    figs = []
    for m in data["mistakes"]:
        if isinstance(m.get("true"), list):  # multi-label
            pred = ", ".join(f"{lab} {s:.2f}" for lab, s in m["predicted"]) or "none"
            w = m["wrong"]
            caption = (f"<b>{esc(w['kind'])}: {esc(w['label'])} {w['score']:.2f}</b><br>"
                       f"predicted: {esc(pred)}<br>true: {esc(', '.join(m['true']) or 'none')}")
        else:
            caption = (f"predicted <b>{esc(m['predicted'])} {m['score']:.2f}</b><br>"
                       f"true: {esc(m['true'])} ({m['true_score']:.2f})")
        try:
            img = (_img(run, m["file"], f"{m['image_url']}") if m.get("file") else
                   '<span class="pred-note">(the image could not be read)</span>')
        except OSError:
            img = f'<span class="pred-note">({esc(m["file"])} is missing)</span>'
        figs.append(f'<figure title="{esc(m["image_url"])}">{img}<figcaption>{caption}</figcaption></figure>')
    return f'<div class="pred-gallery" id="mistakes">{"".join(figs)}</div>'


def _legend(data: dict) -> str:
    from serving.draw import GROUND_TRUTH_COLOUR, class_colour

    esc = html.escape
    rgb = lambda c: f"rgb{tuple(c)}"  # noqa: E731
    shown = sorted({lab for s in data["samples"] for lab in s.get("predicted_labels", [])})
    items = [f'<span class="pred-swatch" style="border-top-style:dashed;border-color:{rgb(GROUND_TRUTH_COLOUR)}">'
             "</span>ground truth (dashed)"]
    items += [f'<span class="pred-swatch" style="border-color:{rgb(class_colour(lab, data["classes"]))}"></span>'
              f"predicted {esc(lab)}" for lab in shown]
    thr = data.get("box_score_threshold")
    note = f"; predictions scored at least {thr:g} (box_score_threshold)" if isinstance(thr, (int, float)) else ""
    return f'<p class="pred-note" id="legend">{" &nbsp; ".join(items)}{esc(note)}</p>'


def _gallery(run: Path, data: dict) -> str:
    esc = html.escape
    figs = []
    for s in data["samples"]:
        try:
            img = _img(run, s["file"], s["image_url"])
        except OSError:
            img = f'<span class="pred-note">({esc(s["file"])} is missing)</span>'
        figs.append(f'<figure title="{esc(s["image_url"])}">{img}<figcaption>{esc(Path(s["image_url"]).name)}: '
                    f'{s["ground_truth"]} true, {s["predicted"]} predicted</figcaption></figure>')
    return f'<div class="pred-gallery" id="samples">{"".join(figs)}</div>'
