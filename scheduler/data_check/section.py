"""The report's "Data" section, from ``RUN/data_check.json`` (no Ray, no torch: a reader of the run folder):
the findings with their lines, and thumbnails of the duplicates, leaks and worst label issues (the images as the
run folder names them; a remote image shows as its URL)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Callable

SHOWN = 12  # findings of each kind in the report (data_check.json has them all)
THUMB_PX = 64


def thumbnail(url: str) -> str:
    """A local image as a small inline PNG (the report stays one file); an image on storage as its URL: the report
    is written without storage credentials."""
    import base64
    import io

    from PIL import Image

    esc = html.escape(url)
    path = Path(url.removeprefix("file://"))
    if "://" in url.removeprefix("file://") or not path.is_file():
        return f"<code>{esc}</code>"
    try:
        with Image.open(path) as im:
            im.thumbnail((THUMB_PX, THUMB_PX))
            buf = io.BytesIO()
            im.convert("RGB").save(buf, "PNG")
    except Exception:  # noqa: BLE001 - an unreadable image is named, not drawn
        return f"<code>{esc}</code>"
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img class="thumb" src="data:image/png;base64,{data}" title="{esc}" alt="{esc}">'


def section(run: Path, thumb: Callable[[str], str] | None = None) -> str:
    """HTML of the section; ``thumb(image_url)`` returns an ``<img>`` for an image (the report's own helper), or
    the URL is shown as text."""
    path = Path(run) / "data_check.json"
    if not path.is_file():
        return ('<p class="note" id="data">Not checked: the run has no data_check.json (visionsweep.data_check: off, '
                "or a run from before the data check).</p>")
    d = json.loads(path.read_text())
    esc = html.escape

    def img(url: str) -> str:
        return thumb(url) if thumb else f"<code>{esc(url)}</code>"

    from scheduler.data_check import summary_line

    parts = [f'<div id="data"><p>{esc(summary_line(d))} (level {esc(d["level"])}; '
             f'{d["training_images"]} training, {d["validation_images"]} validation lines).</p>']
    if d["duplicates"]:
        rows = "".join(f"<tr><td>{esc(g['kind'])}</td><td>{'<br>'.join(esc(x) for x in g['lines'])}</td>"
                       f"<td>{''.join(img(u) for u in dict.fromkeys(g['image_urls']))}</td></tr>"
                       for g in d["duplicates"][:SHOWN])
        parts.append(f"<h3>Duplicates in the training set ({len(d['duplicates'])} groups)</h3><table><tr><th>kind</th>"
                     f"<th>lines</th><th>images</th></tr>{rows}</table>")
    if d["leakage"]:
        rows = "".join(f"<tr><td>{esc(p['kind'])}</td><td>{esc(p['training_line'])}</td>"
                       f"<td>{esc(p['validation_line'])}</td><td>{img(p['training_image_url'])}"
                       f"{img(p['validation_image_url'])}</td></tr>" for p in d["leakage"][:SHOWN])
        parts.append(f"<h3>Training images in the validation set ({len(d['leakage'])})</h3><table><tr><th>kind</th>"
                     f"<th>training line</th><th>validation line</th><th>images</th></tr>{rows}</table>")
    issues = d.get("label_issues") or []
    if issues:
        rows = "".join(f"<tr><td>{esc(i['line'])}</td><td>{esc(str(i['given']))}</td><td>{esc(str(i['suggested']))}"
                       f"</td><td>{i['score']:.3f}</td><td>{img(i['image_url'])}</td></tr>" for i in issues[:SHOWN])
        parts.append(f"<h3>Likely wrong labels ({len(issues)}, worst first)</h3><table><tr><th>line</th><th>given</th>"
                     f"<th>likely</th><th>label quality</th><th>image</th></tr>{rows}</table>")
    elif d.get("label_check"):
        parts.append(f'<p class="note">Labels: {esc(d["label_check"])}.</p>')
    b = d["balance"]
    rows = "".join(f"<tr><td>{esc(c)}</td><td>{n}</td></tr>" for c, n in b["per_class"].items())
    parts.append(f"<h3>Balance</h3><p>{esc(b['unit'])} per class; imbalance ratio {b['imbalance_ratio']}.</p>"
                 f"<table><tr><th>class</th><th>{esc(b['unit'])}</th></tr>{rows}</table>")
    bx = d.get("boxes") or {}
    if bx:
        parts.append(f"<h3>Boxes</h3><p>{bx['objects']} objects; {bx['tiny_objects']} under 32x32 pixels "
                     f"({bx['tiny_share']}); {bx['degenerate_count']} under a pixel; {bx['duplicate_boxes_count']} "
                     f"boxed twice; {bx['invalid_polygons_count']} invalid polygons.</p>")
    advice = [*b["advice"], *bx.get("advice", [])]
    if advice:
        parts.append("<ul>" + "".join(f"<li>{esc(a)}</li>" for a in advice) + "</ul>")
    parts.append("</div>")
    return "".join(parts)
