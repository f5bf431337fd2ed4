"""Predictions (the §15 response of one image) and ground truth (a JSONL ``label``) drawn onto the image, with PIL.

What ``visionsweep predict --draw`` writes and what the sweep report shows (``scheduler.predictions``): a person
checks a model by looking at what it found, not at coordinates.

* classification: the top labels and their scores in a panel at the top left (multi-class: the best
  ``top_k``; multi-label: every label at or above the threshold, or a line saying there is none);
* detection: each box's outline in its class's colour, with ``label score`` on a tag above it;
* instance segmentation: each instance's polygons filled semi-transparently (``MASK_ALPHA``) in its class's colour,
  their outlines and the box;
* ground truth (:func:`draw_ground_truth`): dashed outlines in ``GROUND_TRUTH_COLOUR``, a colour no class gets, so
  "what the data says" and "what the model says" stay apart on one image.

Coordinates in responses and labels are normalised to [0, 1] by the image's width and height (§2.3, §15), so an
image is first scaled up when it is small (:func:`canvas`: a 28 px image has no room for text) and everything is
drawn at the canvas's size.
"""

from __future__ import annotations

from typing import Any, Sequence

from PIL import Image, ImageDraw, ImageFont

# Distinct, saturated colours, class i gets PALETTE[i % len]; green is left out: it is the ground truth's.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230),
    (255, 225, 25), (128, 0, 0), (0, 0, 128), (250, 190, 212), (170, 110, 40), (220, 190, 255),
)
GROUND_TRUTH_COLOUR = (0, 200, 0)
MASK_ALPHA = 0.4  # the fill's opacity: the object stays visible under its mask
MIN_SIDE = 256  # images whose shorter side is smaller are scaled up to this before drawing
MULTILABEL_THRESHOLD = 0.5  # the multi-label decision threshold (as in trainers.metrics)


def class_colour(label: str, labels: Sequence[str] | None = None) -> tuple[int, int, int]:
    """The colour of a class: by its index among the package's labels (stable across images and runs of one
    model), else by a hash of its name."""
    if labels is not None and label in labels:
        i = list(labels).index(label)
    else:
        i = sum(label.encode()) * 31
    return PALETTE[i % len(PALETTE)]


def canvas(image: Image.Image, min_side: int = MIN_SIDE) -> Image.Image:
    """An RGB copy of ``image`` to draw on, scaled up (nearest neighbour: small images keep their crisp pixels)
    until its shorter side is at least ``min_side``; ``min_side=0`` keeps the size."""
    im = image.convert("RGB")
    short = min(im.size)
    if min_side and 0 < short < min_side:
        f = min_side / short
        im = im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))), Image.NEAREST)
    return im.copy() if im is image else im


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # a PIL without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _line_width(im: Image.Image) -> int:
    return max(2, round(min(im.size) / 150))


def _font_size(im: Image.Image) -> int:
    return max(11, round(min(im.size) / 22))


def _pixels(box: dict[str, Any], w: int, h: int) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(box[k]) for k in ("topX", "topY", "bottomX", "bottomY"))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"expected a box {{topX, topY, bottomX, bottomY}} normalised to [0, 1], got {box!r}") \
            from None
    return x0 * w, y0 * h, x1 * w, y1 * h


def _points(part: Sequence[float], w: int, h: int) -> list[tuple[float, float]]:
    if len(part) < 6 or len(part) % 2:
        raise ValueError(f"expected a polygon part [x1, y1, x2, y2, ...] with at least 3 points, got {part!r}")
    return [(float(part[i]) * w, float(part[i + 1]) * h) for i in range(0, len(part), 2)]


def _tag(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, colour: tuple[int, int, int],
         font, image_width: int, above: bool = True) -> None:
    """``text`` on a filled tag of ``colour`` whose bottom-left is at ``xy`` (top-left when there is no room
    above), in black or white, whichever reads on the colour."""
    left, t, r, b = draw.textbbox((0, 0), text, font=font)
    tw, th = r - left + 4, b - t + 4
    x, y = xy
    y = y - th if above and y - th >= 0 else y
    x = max(0.0, min(x, image_width - tw))
    draw.rectangle((x, y, x + tw, y + th), fill=colour)
    ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
    draw.text((x + 2 - left, y + 2 - t), text, fill=ink, font=font)


def caption_lines(response: dict[str, Any], multilabel: bool = False, threshold: float = MULTILABEL_THRESHOLD,
                  top_k: int = 3) -> list[str]:
    """The lines a classification response is summed up in: ``label score``, best first (multi-class: the best
    ``top_k``; multi-label: every label at or above ``threshold``)."""
    probs, labels = response.get("probs"), response.get("labels")
    if not isinstance(probs, list) or not isinstance(labels, list) or len(probs) != len(labels):
        raise ValueError("expected a classification response {probs: [...], labels: [...]} of equal lengths, "
                         f"got keys {sorted(response)}")
    ranked = sorted(zip(labels, probs), key=lambda lp: -lp[1])
    if multilabel:
        chosen = [(lab, p) for lab, p in ranked if p >= threshold]
        if not chosen:
            return [f"no label >= {threshold:g}"]
    else:
        chosen = ranked[:top_k]
    return [f"{lab} {p:.2f}" for lab, p in chosen]


def draw_response(image: Image.Image, response: dict[str, Any], labels: Sequence[str] | None = None,
                  multilabel: bool = False, threshold: float = MULTILABEL_THRESHOLD,
                  min_side: int = MIN_SIDE, im: Image.Image | None = None) -> Image.Image:
    """``image`` with one §15 response drawn on it (the task is read from the response: ``probs`` is
    classification, ``boxes`` detection, boxes with ``polygon`` segmentation). ``labels`` (the package's classes)
    fix the colours; ``im``: draw on this canvas instead of a fresh one (e.g. one the ground truth is on)."""
    im = canvas(image, min_side) if im is None else im
    if "probs" in response:
        return _draw_caption(im, caption_lines(response, multilabel, threshold))
    if not isinstance(response.get("boxes"), list):
        raise ValueError(f"expected a §15 response with 'probs' (classification) or 'boxes' (detection), got keys "
                         f"{sorted(response)}")
    w, h = im.size
    boxes = response["boxes"]
    polygons = [b for b in boxes if b.get("polygon")]
    if polygons:  # one overlay for all masks: the fills are composited once, the outlines go on top
        overlay = Image.new("RGBA", im.size, (0, 0, 0, 0))
        od = ImageDraw.Draw(overlay)
        alpha = round(255 * MASK_ALPHA)
        for b in polygons:
            for part in b["polygon"]:
                od.polygon(_points(part, w, h), fill=(*class_colour(str(b.get("label")), labels), alpha))
        im = Image.alpha_composite(im.convert("RGBA"), overlay).convert("RGB")
    draw = ImageDraw.Draw(im)
    lw, font = _line_width(im), _font(_font_size(im))
    for b in polygons:
        colour = class_colour(str(b.get("label")), labels)
        for part in b["polygon"]:
            pts = _points(part, w, h)
            draw.line([*pts, pts[0]], fill=colour, width=max(1, lw // 2))
    for b in reversed(boxes):  # best score last: its tag is on top where tags overlap
        colour = class_colour(str(b.get("label")), labels)
        x0, y0, x1, y1 = _pixels(b.get("box", {}), w, h)
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=colour, width=lw)
        score = b.get("score")
        text = f"{b.get('label')} {score:.2f}" if isinstance(score, (int, float)) else str(b.get("label"))
        _tag(draw, (x0, y0), text, colour, font, w)
    return im


def _draw_caption(im: Image.Image, lines: list[str]) -> Image.Image:
    """A dark, semi-transparent panel at the top left with one line per label."""
    font = _font(_font_size(im))
    probe = ImageDraw.Draw(im)
    boxes = [probe.textbbox((0, 0), ln, font=font) for ln in lines]
    line_h = max(b[3] - b[1] for b in boxes) + 4
    width = max(b[2] - b[0] for b in boxes) + 8
    overlay = Image.new("RGBA", im.size, (0, 0, 0, 0))
    ImageDraw.Draw(overlay).rectangle((0, 0, width, line_h * len(lines) + 4), fill=(0, 0, 0, 170))
    im = Image.alpha_composite(im.convert("RGBA"), overlay).convert("RGB")
    draw = ImageDraw.Draw(im)
    for i, (ln, b) in enumerate(zip(lines, boxes)):
        draw.text((4 - b[0], 4 + i * line_h - b[1]), ln, fill=(255, 255, 255), font=font)
    return im


def _dashed(draw: ImageDraw.ImageDraw, pts: list[tuple[float, float]], colour, width: int, dash: float) -> None:
    """A dashed polyline: ``dash`` on, ``dash`` off, the pattern carried over the corners."""
    on, left = True, dash
    for (xa, ya), (xb, yb) in zip(pts, pts[1:]):
        length = ((xb - xa) ** 2 + (yb - ya) ** 2) ** 0.5
        pos = 0.0
        while pos < length:
            step = min(left, length - pos)
            if on:
                t0, t1 = pos / length, (pos + step) / length
                draw.line([(xa + (xb - xa) * t0, ya + (yb - ya) * t0), (xa + (xb - xa) * t1, ya + (yb - ya) * t1)],
                          fill=colour, width=width)
            pos += step
            left -= step
            if left <= 1e-9:
                on, left = not on, dash


def draw_ground_truth(im: Image.Image, label: Any, colour: tuple[int, int, int] = GROUND_TRUTH_COLOUR) -> Image.Image:
    """The ground truth of a detection or segmentation JSONL ``label`` (a box object or a list of boxes /
    instances with ``polygon``, §2.3) drawn dashed onto the canvas ``im`` (in place; returned too): the box of a
    detection, the polygons of an instance. Names are left out: the predictions' tags carry them."""
    items = [label] if isinstance(label, dict) else list(label or [])
    draw = ImageDraw.Draw(im)
    w, h = im.size
    lw = _line_width(im)
    dash = max(4.0, min(w, h) / 40)
    for obj in items:
        if not isinstance(obj, dict):
            raise ValueError(f"expected a ground-truth box or instance object, got {obj!r}")
        if obj.get("polygon"):
            for part in obj["polygon"]:
                pts = _points(part, w, h)
                _dashed(draw, [*pts, pts[0]], colour, lw, dash)
        else:
            x0, y0, x1, y1 = _pixels(obj, w, h)
            x1, y1 = max(x0, x1 - 1), max(y0, y1 - 1)
            _dashed(draw, [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)], colour, lw, dash)
    return im


def drawing_names(paths: Sequence[str]) -> list[str]:
    """One PNG name per input: the input's stem (``photos/cat.jpg`` -> ``cat.png``), ``-2``, ``-3`` ... appended
    where two inputs share a stem, so no drawing overwrites another."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        stem = p.rstrip("/").rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
        stem = stem.rsplit(".", 1)[0] if "." in stem[1:] else stem
        n = seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}.png" if n == 1 else f"{stem}-{n}.png")
    return names


def save_drawings(images: Sequence[bytes], paths: Sequence[str], responses: Sequence[dict[str, Any]], outdir: str,
                  labels: Sequence[str] | None = None, multilabel: bool = False, storage_options=None) -> list[str]:
    """Draw each response on its image and write ``OUTDIR/<stem>.png`` (a local folder, created, or a storage
    URL); returns the paths written."""
    import io
    from pathlib import Path

    from trainers.data import storage
    from trainers.data.images import decode_image
    from trainers.data.urls import is_remote
    from trainers.errors import VisionsweepError

    remote = is_remote(outdir)
    if not remote:
        try:
            Path(outdir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise VisionsweepError(f"{outdir}: cannot create the folder for the drawings ({e.strerror})") from None
    written = []
    for data, path, response, name in zip(images, paths, responses, drawing_names(paths)):
        im = draw_response(decode_image(data, path), response, labels, multilabel)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        target = f"{outdir.rstrip('/')}/{name}" if remote else str(Path(outdir) / name)
        if remote:
            storage.write_bytes(target, buf.getvalue(), storage_options)
        else:
            try:
                Path(target).write_bytes(buf.getvalue())
            except OSError as e:
                raise VisionsweepError(f"{target}: cannot write the drawing ({e.strerror})") from None
        written.append(target)
    return written
