"""Reading datasets (SPEC §2): MLTable and JSONL, image_url forms, datastores, split, size rule, bad images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import fsspec
import pytest

from trainers import hyperparameters as hp
from trainers.data import check_images, load_records, prepare_data, read_image, resolve_url, split_records, table_files
from trainers.errors import DataError

MC = hp.MULTICLASS


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_mltable_folder_reads_every_line(sample):
    recs = load_records(str(sample / "train"), MC, "label")
    assert len(recs) == 400
    assert {r.label for r in recs} == {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                       "Sneaker", "Bag", "Ankle boot"}
    # image_url is resolved relative to the JSONL file
    assert Path(recs[0].image_url).is_file()
    assert recs[0].source.endswith("train_annotations.jsonl:1")


def test_multilabel_sample(sample):
    recs = load_records(str(sample / "train_multilabel"), hp.MULTILABEL, "label")
    assert all(isinstance(r.label, tuple) for r in recs)
    assert ("footwear",) in {r.label for r in recs}


def test_bare_jsonl_and_url_forms(tmp_path, sample):
    img = sample / "images" / "train_0000.png"
    (tmp_path / "imgs").mkdir()
    shutil.copyfile(img, tmp_path / "imgs" / "a.png")
    f = write_jsonl(tmp_path / "data.jsonl", [
        {"image_url": "imgs/a.png", "label": "x"},
        {"image_url": str(img), "label": "y"},
        {"image_url": f"file://{img}", "label": "y"},
        {"image_url": "s3://bucket/key.png", "label": "z"},
    ])
    recs = load_records(str(f), MC, "label")
    assert [r.image_url for r in recs] == [str(tmp_path / "imgs" / "a.png"), str(img), str(img),
                                           "s3://bucket/key.png"]


def test_invalid_line_error_names_file_and_line(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"image_url": "a.png", "label": "x"}, '{"image_url": "b.png", "label": '])
    with pytest.raises(DataError, match=r"d\.jsonl:2: not a valid JSON line"):
        load_records(str(f), MC, "label")


def test_invalid_lines_drop_from_mltable(tmp_path):
    write_jsonl(tmp_path / "t" / "a.jsonl", [{"image_url": "a.png", "label": "x"}, "not json",
                                             {"image_url": "c.png", "label": ["list"]}])
    (tmp_path / "t" / "MLTable").write_text(
        "paths:\n  - file: ./a.jsonl\ntransformations:\n  - read_json_lines:\n      encoding: utf8\n"
        "      invalid_lines: drop\n")
    warnings: list[str] = []
    recs = load_records(str(tmp_path / "t"), MC, "label", warnings=warnings)
    assert len(recs) == 1 and "dropped 2 invalid line(s)" in warnings[0]


@pytest.mark.parametrize("row,expected", [
    ({"label": "x"}, "expected an 'image_url' string"),
    ({"image_url": "a.png"}, "missing the target column 'label'"),
    ({"image_url": "a.png", "label": ["a", "b"]}, "label: expected one class name"),
    ({"image_url": "a.png", "label": "x", "image_details": "png"}, "image_details"),
    ([1, 2], "expected a JSON object"),
])
def test_line_errors(tmp_path, row, expected):
    f = write_jsonl(tmp_path / "d.jsonl", [{"image_url": "ok.png", "label": "x"}, row])
    with pytest.raises(DataError, match=expected) as e:
        load_records(str(f), MC, "label")
    assert "d.jsonl:2:" in str(e.value)


def test_mltable_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no MLTable file"):
        table_files(str(tmp_path / "empty"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "MLTable").write_text("paths:\n  - folder: ./x\n")
    with pytest.raises(DataError, match=r"paths\[0\]: expected '- file: <path"):
        table_files(str(tmp_path / "bad"))


def test_datastore_uris(tmp_path, monkeypatch):
    stores = {"images": "az://container/root", "workspaceblobstore": "s3://bucket/base"}
    url = "azureml://subscriptions/s/resourcegroups/r/workspaces/w/datastores/images/paths/image_data/a.png"
    assert resolve_url(url, "/x", stores, "f:1") == "az://container/root/image_data/a.png"
    assert resolve_url("AmlDatastore://image_data/b.png", "/x", stores, "f:1") == "s3://bucket/base/image_data/b.png"
    with pytest.raises(DataError, match=r"f:1: .*datastore 'other'.*known: images, workspaceblobstore"):
        resolve_url(url.replace("/images/", "/other/"), "/x", stores, "f:1")
    # a datastore map can also come from the file named by $VISIONSWEEP_DATASTORES
    from trainers.data import load_datastores

    m = tmp_path / "stores.yaml"
    m.write_text("images: /data/imgs\n")
    monkeypatch.setenv("VISIONSWEEP_DATASTORES", str(m))
    assert load_datastores({"extra": "s3://e"}) == {"images": "/data/imgs", "extra": "s3://e"}


def test_data_assets_resolve_by_version_and_latest(tmp_path, monkeypatch):
    from trainers.data import load_data_assets, resolve_data_asset

    assets = {"fridge:1": "az://c/v1", "fridge:2": "az://c/v2", "fridge:10": "s3://b/v10", "other:3": "/d/o"}
    assert resolve_data_asset("azureml:fridge:2", assets, "training_data.path") == "az://c/v2"
    assert resolve_data_asset("azureml:fridge@latest", assets, "training_data.path") == "s3://b/v10"  # 10 > 2
    assert resolve_data_asset("./data/train", assets, "training_data.path") == "./data/train"  # not an asset
    with pytest.raises(DataError, match=r"validation_data.path: data asset 'azureml:fridge:3' is not in the "
                                        r"data-asset map \(known: fridge:1, fridge:10, fridge:2, other:3\)"):
        resolve_data_asset("azureml:fridge:3", assets, "validation_data.path")
    with pytest.raises(DataError, match="not in the data-asset map"):
        resolve_data_asset("azureml:nothing@latest", assets, "training_data.path")
    m = tmp_path / "assets.yaml"
    m.write_text("'fridge:4': az://c/v4\n")
    monkeypatch.setenv("VISIONSWEEP_DATA_ASSETS", str(m))
    assert load_data_assets({"x:1": "/x"}) == {"fridge:4": "az://c/v4", "x:1": "/x"}


def test_wasbs_urls_are_read_as_abfs():
    url = "wasbs://images@myaccount.blob.core.windows.net/fridge/a.png"
    assert resolve_url(url, "/x", {}, "f:1") == "abfs://images@myaccount.blob.core.windows.net/fridge/a.png"
    assert resolve_url(url.replace("wasbs", "wasb"), "/x", {}, "f:1").startswith("abfs://images@myaccount.")


def test_invalid_text_names_its_line(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(b'{"image_url": "a.png", "label": "a"}\n{"image_url": "b.png", "label": "\xff"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: not valid utf8 text"):
        load_records(str(f), MC, "label")


def test_fsspec_urls_are_read_through_fsspec(sample):
    # A real fsspec filesystem (in-memory) holding an MLTable, its JSONL and the images.
    fs = fsspec.filesystem("memory")
    lines = []
    for i, src in enumerate(sorted((sample / "images").glob("train_00[0-1]*.png"))):
        fs.pipe(f"/ds/images/{src.name}", src.read_bytes())
        lines.append(json.dumps({"image_url": f"../images/{src.name}", "label": "even" if i % 2 else "odd"}))
    fs.pipe("/ds/train/a.jsonl", ("\n".join(lines) + "\n").encode())
    fs.pipe("/ds/train/MLTable", b"paths:\n  - file: ./a.jsonl\n")
    data = prepare_data(MC, "label", "memory://ds/train", None, 0.2, 0)
    assert len(data.train) + len(data.valid) == 20
    assert data.train[0].image_url.startswith("memory://ds/images/")
    assert read_image(data.train[0].image_url).size == (28, 28)


def test_split_is_deterministic_and_twenty_percent(sample):
    recs = load_records(str(sample / "train"), MC, "label")
    a_train, a_valid = split_records(recs, 0.2, seed=0)
    b_train, b_valid = split_records(recs, 0.2, seed=0)
    assert a_valid == b_valid and len(a_valid) == 80 and len(a_train) == 320
    assert not set(r.source for r in a_train) & set(r.source for r in a_valid)
    assert split_records(recs, 0.2, seed=1)[1] != a_valid


def test_at_least_ten_images(tmp_path, sample):
    rows = [{"image_url": str(sample / "images" / f"train_{i:04d}.png"), "label": "ab"[i % 2]} for i in range(9)]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match="has 9 image.*at least 10 are required"):
        prepare_data(MC, "label", str(f), None, 0.2, 0)


def test_missing_and_broken_images_are_listed_before_training(tmp_path, sample):
    (tmp_path / "broken.png").write_text("this is not a png")
    rows = [{"image_url": str(sample / "images" / f"train_{i:04d}.png"), "label": "ab"[i % 2]} for i in range(12)]
    rows += [{"image_url": "missing.png", "label": "a"}, {"image_url": "broken.png", "label": "b"}]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as e:
        prepare_data(MC, "label", str(f), str(f), 0.2, 0)
    msg = str(e.value)
    assert "2 of 14 images are missing or cannot be decoded" in msg
    assert "d.jsonl:13" in msg and "file not found" in msg and "d.jsonl:14" in msg and "cannot decode" in msg
    # skip mode drops them with a warning instead
    data = prepare_data(MC, "label", str(f), None, 0.2, 0, bad_images="skip")
    assert len(data.train) + len(data.valid) == 12
    assert any("skipped" in w for w in data.warnings)


def test_few_samples_per_label_is_a_warning(tmp_path, sample):
    rows = [{"image_url": str(sample / "images" / f"train_{i:04d}.png"), "label": "a" if i else "rare"}
            for i in range(20)]
    data = prepare_data(MC, "label", str(write_jsonl(tmp_path / "d.jsonl", rows)), None, 0.2, 0)
    assert any("fewer than 10" in w for w in data.warnings)


def test_detection_labels_load_for_all_tasks(tmp_path, sample):
    img = str(sample / "images" / "train_0000.png")
    rows = [{"image_url": img, "image_details": {"format": "png", "width": 28, "height": 28},
             "label": [{"label": "item", "topX": 0.1, "topY": 0.1, "bottomX": 0.9, "bottomY": 0.9, "isCrowd": 0}]}] * 12
    data = prepare_data(hp.DETECTION, "label", str(write_jsonl(tmp_path / "d.jsonl", rows)), None, 0.2, 0)
    assert data.classes == ["item"] and data.train[0].label[0].bottom_x == 0.9


def test_check_images_passes_good_records(sample):
    recs = load_records(str(sample / "valid"), MC, "label")
    assert check_images(recs) == recs


def test_a_decompression_bomb_in_the_training_data_is_a_data_error_naming_the_image():
    from tests.test_serving import png_bomb
    from trainers.data.images import decode_image

    with pytest.raises(DataError, match=r"train.jsonl line 7: too many pixels"):
        decode_image(png_bomb(20000), "train.jsonl line 7")
