"""The image check before a sweep reads headers, not images (issue 18): measured at a counting proxy in front of a
real S3 server; bodies that break later are the trials' to report or skip; the node cache is sized by the disk."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.storage_servers import Proxy
from trainers.data import images as images_mod
from trainers.data import storage
from trainers.data.datasets import ImageDataset
from trainers.data.images import ImageStore, check_images
from trainers.data.prepare import prepare_data
from trainers.data.tables import Record
from trainers.errors import DataError

MC = "image_classification"


def jpeg(seed: int, side: int = 900, icc: int = 0) -> bytes:
    """A photo-sized JPEG (noise compresses badly: about 1 MB at 900 x 900), optionally with an ICC profile of
    ``icc`` bytes before its frame header (as cameras and editors write them)."""
    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=95, **({"icc_profile": bytes(icc)} if icc else {}))
    return out.getvalue()


@pytest.fixture(autouse=True)
def _fresh():
    storage.clear_cache()
    yield
    storage.clear_cache()


@pytest.fixture(scope="module")
def photos(moto_s3, tmp_path_factory) -> tuple[str, int]:
    """12 JPEGs of about 1 MB in a bucket (one with a 200 kB ICC profile) and a JSONL naming them."""
    d = tmp_path_factory.mktemp("photos")
    (d / "images").mkdir()
    lines = []
    for i in range(12):
        (d / "images" / f"p{i}.jpg").write_bytes(jpeg(i, icc=200_000 if i == 0 else 0))
        lines.append(json.dumps({"image_url": f"images/p{i}.jpg", "label": "ab"[i % 2]}))
    (d / "train.jsonl").write_text("\n".join(lines) + "\n")
    moto_s3.create("photos")
    url = moto_s3.upload_tree("photos", d, "set")
    return url, sum(p.stat().st_size for p in (d / "images").iterdir())


def test_a_streaming_job_reads_headers_only_before_its_first_trial(moto_s3, photos):
    url, image_bytes = photos
    assert image_bytes > 12 * 800_000
    with Proxy(moto_s3.endpoint) as proxy, moto_s3.env(AWS_ENDPOINT_URL=proxy.url):
        data = prepare_data(MC, "label", f"{url}/train.jsonl", None, 0.25, 0, store=ImageStore(stream=True))
        before_training = proxy.bytes_out
        gets = proxy.requests.get("GET", 0)
        # what a trial reads later is the images in full: the proxy counts bodies
        proxy.reset()
        assert data.store.read(data.train[0].image_url) == storage.read_bytes(data.train[0].image_url)
        assert proxy.bytes_out >= 2 * 800_000
    assert len(data.train) + len(data.valid) == 12
    assert data.image_bytes == image_bytes == data.remote_bytes  # sizes known without reading the bodies
    # the image with a 200 kB header was read up to its frame header (16 kB, 64 kB, 256 kB), the others 16 kB
    assert before_training <= 0.1 * image_bytes, (before_training, image_bytes)
    assert gets <= 12 + 2 + 3  # one ranged GET per image, the JSONL, and the ICC image's two longer reads


def test_a_header_that_does_not_decode_is_listed_before_training(tmp_path):
    good = jpeg(1, side=64)
    (tmp_path / "ok.jpg").write_bytes(good)
    (tmp_path / "text.jpg").write_bytes(b"GIF89a but nothing more")
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, "PNG")  # a few kB declaring 400 M pixels
    (tmp_path / "bomb.png").write_bytes(bomb.getvalue())
    recs = [Record(str(tmp_path / n), "a", f"d.jsonl:{i}") for i, n in enumerate(["ok.jpg", "text.jpg", "bomb.png"], 1)]
    with pytest.raises(DataError) as e:
        check_images(recs)
    msg = str(e.value)
    assert "2 of 3 images" in msg and "d.jsonl:2" in msg and "cannot decode" in msg
    assert "d.jsonl:3" in msg and "too many pixels" in msg


def _truncated_jpeg_records(tmp_path: Path) -> list[Record]:
    recs = []
    for i in range(4):
        data = jpeg(i, side=64)
        if i == 1:
            data = data[: len(data) // 2]  # the header is whole, the body cut: only decoding finds it
        (tmp_path / f"{i}.jpg").write_bytes(data)
        recs.append(Record(str(tmp_path / f"{i}.jpg"), "ab"[i % 2], f"train.jsonl:{i + 1}"))
    return recs


def test_a_body_that_breaks_while_training_fails_the_trial_naming_its_line(tmp_path):
    recs = _truncated_jpeg_records(tmp_path)
    assert check_images(recs) == recs  # the header check passes it
    ds = ImageDataset(recs, lambda img, r, view: (img.size, r.source), ImageStore())
    assert ds[0] == ((64, 64), "train.jsonl:1")
    with pytest.raises(DataError, match=r"train\.jsonl:2: .*1\.jpg: not a decodable image"):
        ds.__getitems__([0, 1])


def test_under_skip_another_image_stands_in_and_the_log_names_the_line(tmp_path, caplog):
    recs = _truncated_jpeg_records(tmp_path)
    ds = ImageDataset(recs, lambda img, r, view: r.source, ImageStore(bad_images="skip"))
    with caplog.at_level(logging.WARNING, logger="trainers.data.datasets"):
        assert ds.__getitems__([0, 1, 3]) == ["train.jsonl:1", "train.jsonl:3", "train.jsonl:4"]
        assert ds[1] == "train.jsonl:3"
    warned = [r.getMessage() for r in caplog.records if "train.jsonl:2" in r.getMessage()]
    assert len(warned) == 1 and "bad_images: skip" in warned[0]  # once per image, not once per read


def _disk(free: int):
    return lambda path: type("Usage", (), {"total": 4 * 2**40, "used": 0, "free": free})()


def test_the_node_cache_is_sized_by_the_disk_not_by_an_invented_cap(moto_s3, photos, tmp_path, monkeypatch):
    url, _ = photos
    urls = [f"{url}/images/p{i}.jpg" for i in range(3)]
    store = ImageStore(cache_dir=str(tmp_path / "cache"), cache_max_bytes=None)
    # a 150 GB dataset on a node with 2 TB free is downloaded (the check passes; the three objects are fetched)
    monkeypatch.setattr(images_mod.shutil, "disk_usage", _disk(2 * 10**12))
    with moto_s3.env():
        store.materialize(urls, total_bytes=150 * 10**9)
    assert len(list((tmp_path / "cache" / "objects").rglob("*"))) >= 3
    # ... and on a node with 100 GB free it is refused before a byte is fetched, saying what is missing
    images_mod._BUDGETS.clear()
    monkeypatch.setattr(images_mod.shutil, "disk_usage", _disk(100 * 10**9))
    small = ImageStore(cache_dir=str(tmp_path / "other"), cache_max_bytes=None)
    with moto_s3.env(), pytest.raises(DataError) as e:
        small.materialize(urls, total_bytes=150 * 10**9)
    msg = str(e.value)
    assert "139.70 GiB" in msg and "91.13 GiB" in msg and "48.57 GiB missing" in msg, msg
    assert "stream_image_files" in msg and str(tmp_path / "other") in msg
    assert not (tmp_path / "other" / "objects").exists()
