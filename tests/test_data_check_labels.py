"""The likely-label-errors check (scheduler/data_check/labels.py) on real images and the real backbone.

The bundled Fashion-MNIST sample (400 images, 10 classes) is embedded once, in Ray tasks, by torchvision's ImageNet
MobileNetV2 from the weights store ``make setup`` fills; 5 % of its labels are then flipped to another class and the
check must find at least half of them while flagging at most three times as many (issue 29's "Done when").
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from scheduler.data_check.labels import FEATURES, backbone_weights, embed, find_label_issues
from trainers import hyperparameters as hp
from trainers.data import load_records
from trainers.data.images import ImageStore
from trainers.errors import DataError, VisionsweepError
from trainers.models.weights.sources import WeightsConfig

FLIP_SEED = 29  # not among the seeds the probe's settings were chosen on (0-9; see labels.py)


@pytest.fixture(scope="module")
def multiclass(ray_session, sample, mobilenet_weights, tmp_path_factory):
    """The sample's records, class names and features (embedded once for the module), and the embedding's time."""
    records = load_records(str(sample / "train"), hp.MULTICLASS, "label")
    cfg = WeightsConfig.create(store=str(mobilenet_weights.parent), download=False,
                               cache_dir=str(tmp_path_factory.mktemp("cache")))
    start = time.perf_counter()
    features = embed(records, ImageStore(), chunk=200, weights_cfg=cfg)
    return records, sorted({r.label for r in records}), features, time.perf_counter() - start


def _flip(records, classes, fraction, seed):
    """``records`` with ``fraction`` of their labels changed to another class (seeded), and the flipped indices."""
    rng = np.random.default_rng(seed)
    flipped = sorted(rng.choice(len(records), size=round(len(records) * fraction), replace=False).tolist())
    out = list(records)
    for i in flipped:
        others = [c for c in classes if c != records[i].label]
        out[i] = replace(records[i], label=others[rng.integers(len(others))])
    return out, flipped


def test_embed_gives_one_finite_row_per_record(multiclass):
    records, _, features, _ = multiclass
    assert features.shape == (len(records), FEATURES) and features.dtype == np.float32
    assert np.isfinite(features).all()
    # pretrained features tell images apart: no two of the 400 rows are the same
    assert len(np.unique(features.round(4), axis=0)) == len(records)


def test_flipped_labels_are_found(multiclass):
    records, classes, features, embed_s = multiclass
    noisy, flipped = _flip(records, classes, 0.05, FLIP_SEED)
    start = time.perf_counter()
    issues = find_label_issues(hp.MULTICLASS, noisy, classes, features)
    rank_s = time.perf_counter() - start
    flagged = {int(x["line"].rsplit(":", 1)[1]) - 1 for x in issues}  # the sample has no blank lines
    found = flagged & set(flipped)
    recall, precision = len(found) / len(flipped), len(found) / max(1, len(flagged))
    print(f"\nlabel check, Fashion-MNIST sample, {len(flipped)} of {len(records)} labels flipped (seed {FLIP_SEED}): "
          f"recall {recall:.2f}, precision {precision:.2f}, {len(flagged)} flagged "
          f"({len(flagged) / len(flipped):.2f}x the flipped); embed {embed_s:.1f} s, rank {rank_s:.1f} s")
    # issue 29's bar: at least half of the flipped labels, at most three times as many flagged
    assert recall >= 0.5
    assert len(flagged) <= 3 * len(flipped)
    # worst first: the label-quality score never decreases down the list
    scores = [x["score"] for x in issues]
    assert scores == sorted(scores)
    # every finding names its place, the given label (the flipped one) and a different suggestion
    by_line = {x["line"]: x for x in issues}
    for i in found:
        x = by_line[noisy[i].source]
        assert x["image_url"] == noisy[i].image_url and x["given"] == noisy[i].label
        assert x["suggested"] in classes and x["suggested"] != x["given"] and 0 <= x["score"] <= 1
    # the right class is suggested for most of the flipped labels found
    assert sum(by_line[noisy[i].source]["suggested"] == records[i].label for i in found) >= 0.7 * len(found)


def test_multilabel_issues(multiclass, sample):
    records, _, features, _ = multiclass
    ml = load_records(str(sample / "train_multilabel"), hp.MULTILABEL, "label")
    row = {r.image_url: k for k, r in enumerate(records)}
    feats = features[[row[r.image_url] for r in ml]]  # the same 400 images, labelled by garment group
    classes = sorted({c for r in ml for c in r.label})
    # one bag labelled as upper-body clothing: as wrong as a multi-label can be
    bag = next(i for i, r in enumerate(ml) if r.label == ("bag",))
    noisy = list(ml)
    noisy[bag] = replace(ml[bag], label=("clothing", "upper-body"))
    issues = find_label_issues(hp.MULTILABEL, noisy, classes, feats)
    assert issues
    for x in issues:
        assert set(x) == {"image_url", "line", "given", "suggested", "score"}
        assert isinstance(x["given"], list) and isinstance(x["suggested"], list)
        assert set(x["given"]) <= set(classes) and set(x["suggested"]) <= set(classes)
        assert isinstance(x["score"], float) and 0 <= x["score"] <= 1
    lines = [x["line"] for x in issues]
    # the flipped one is among the three worst, and the suggestion is its real label
    assert noisy[bag].source in lines[:3]
    assert issues[lines.index(noisy[bag].source)]["suggested"] == ["bag"]


def test_multilabel_flipped_groups_are_found(multiclass, sample):
    records, _, features, _ = multiclass
    ml = load_records(str(sample / "train_multilabel"), hp.MULTILABEL, "label")
    row = {r.image_url: k for k, r in enumerate(records)}
    feats = features[[row[r.image_url] for r in ml]]
    classes = sorted({c for r in ml for c in r.label})
    # 5 % of the images given another image's label set (footwear for a bag, upper- for lower-body clothing ...)
    groups = sorted({r.label for r in ml})
    rng = np.random.default_rng(FLIP_SEED)
    flipped = sorted(rng.choice(len(ml), size=len(ml) // 20, replace=False).tolist())
    noisy = list(ml)
    for i in flipped:
        others = [g for g in groups if g != ml[i].label]
        noisy[i] = replace(ml[i], label=others[rng.integers(len(others))])
    issues = find_label_issues(hp.MULTILABEL, noisy, classes, feats)
    flagged = {x["line"] for x in issues}
    found = flagged & {noisy[i].source for i in flipped}
    print(f"\nmulti-label check, {len(flipped)} of {len(ml)} label sets flipped (seed {FLIP_SEED}): recall "
          f"{len(found) / len(flipped):.2f}, {len(flagged)} flagged ({len(flagged) / len(flipped):.2f}x the flipped)")
    assert len(found) >= 0.5 * len(flipped) and len(flagged) <= 3 * len(flipped)


def test_unreadable_image_names_its_line_or_is_skipped(multiclass, mobilenet_weights, tmp_path):
    records, classes, features, _ = multiclass
    (tmp_path / "broken.png").write_bytes(b"not a png")
    broken = replace(records[0], image_url=str(tmp_path / "broken.png"), source="train.jsonl:7")
    cfg = WeightsConfig.create(store=str(mobilenet_weights.parent), download=False, cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match="train.jsonl:7"):
        embed([records[1], broken], ImageStore(), weights_cfg=cfg)
    # bad_images: skip, as in training: the row is NaN and the check leaves the image out, saying so
    rows = embed([records[1], broken], ImageStore(bad_images="skip"), weights_cfg=cfg)
    assert np.isfinite(rows[0]).all() and np.isnan(rows[1]).all()
    notes: list[str] = []
    find_label_issues(hp.MULTICLASS, [*records, broken], classes, np.vstack([features, rows[1:]]), warnings=notes)
    assert any("1 unreadable image left out" in n for n in notes)


def test_missing_backbone_weights_name_the_file_and_places(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # not this machine's torch hub cache
    cfg = WeightsConfig.create(store=str(tmp_path / "empty-store"), download=False, cache_dir=str(tmp_path / "c"))
    with pytest.raises(VisionsweepError) as e:
        backbone_weights(cfg)
    # never a random backbone: the error names the file and every place it was looked for
    assert "mobilenet_v2-b0353104.pth" in str(e.value)
    assert str(tmp_path / "empty-store") in str(e.value) and str(tmp_path / "torch") in str(e.value)


def test_small_classes_reduce_folds_or_are_left_out(multiclass):
    records, classes, features, _ = multiclass
    # Bag kept with 3 images, Sandal with 1: folds drop to 3, and the single Sandal cannot be scored out of fold
    keep = [i for i, r in enumerate(records) if r.label not in ("Bag", "Sandal")]
    keep += [i for i, r in enumerate(records) if r.label == "Bag"][:3]
    keep += [i for i, r in enumerate(records) if r.label == "Sandal"][:1]
    notes: list[str] = []
    issues = find_label_issues(hp.MULTICLASS, [records[i] for i in keep], classes, features[keep], warnings=notes)
    assert any("3 folds instead of 5" in n for n in notes)
    assert any("single image" in n and "Sandal" in n for n in notes)
    assert all(x["given"] != "Sandal" for x in issues)


def test_unknown_label_names_its_line(multiclass):
    records, classes, features, _ = multiclass
    bad = [replace(records[0], label="Hat"), *records[1:]]
    with pytest.raises(DataError, match=rf"{records[0].source}: label 'Hat' is not one of the classes"):
        find_label_issues(hp.MULTICLASS, bad, classes, features)
