"""The weights manifest: for each ``model_name``, the published pretrained weights it starts from.

Nothing here is typed by hand: every entry is read from the library that publishes the weights.

* torchvision classifiers and detector backbones: the weight enums (``ResNet18_Weights.IMAGENET1K_V1``):
  URL, file name, the SHA-256 prefix torchvision puts in the file name and checks, file size;
* torchvision detectors with published COCO weights (the ResNet-50 Faster R-CNN, RetinaNet and Mask R-CNN):
  their ``COCO_V1`` enums; the other depths get the ImageNet ResNet under a fresh FPN and heads;
* timm models (ResNeSt, SE-ResNeXt, the ViTs): timm's pretrained config (hub id, licence);
* MMDetection zoo configs: the ``Weights`` URL of the model in the zoo's metafile;
* ``yolov5``: ultralytics' release file of each ``model_size`` (``yolov5s.pt`` ...: file names, release URL and the
  hashes known here, from ``trainers.models.weights.ultralytics``), with mmyolo's zoo checkpoint of the same
  network (its metafile's URL) as the alternative a store or cache may hold instead;
* Hugging Face classifiers: the hub id itself (a folder: config, weights, image-processor config).

Which ImageNet weights: the ``IMAGENET1K_V1`` enum of every torchvision model, the original recipe and the
one torchvision's own detection builders put under their FPNs, so one file serves a classifier and the
detectors on the same ResNet (a store holds one file per architecture).

``file`` is where an entry lives inside a weights store (see ``trainers.models.weights.sources``): the library's
own file name for URL downloads (``mobilenet_v2-b0353104.pth``, exactly the name torchvision caches it
under), ``<hub id>/<file>`` for hub files and ``<hub id>/`` for a Hugging Face model folder.
"""

from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from trainers import hyperparameters as hp
from trainers.errors import VisionsweepError
from trainers.models.names import CURATED_HF, CURATED_MMDET, hub_id

# torchvision and OpenMMLab publish the first hex digits of a file's SHA-256 in its name (torch.hub's rule)
HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")
TORCHVISION_LICENCE = "BSD-3-Clause (torchvision)"
MMDET_LICENCE = "Apache-2.0 (MMDetection model zoo)"
MMYOLO_LICENCE = "GPL-3.0 (mmyolo)"
TIMM_HUB_FILE = "model.safetensors"  # what timm reads first from a timm/... hub repository
HF_FILES = ("config.json", "preprocessor_config.json", "model.safetensors")  # a transformers classifier's folder


@dataclass(frozen=True)
class WeightsEntry:
    """One model's published initial weights."""

    model_name: str
    library: str  # torchvision | timm | mmdetection | mmyolo | huggingface
    weights: str  # the library's name for them (enum, timm tag, zoo config, hub id)
    file: str  # path inside a weights store; a trailing "/" marks a folder (Hugging Face models)
    url: str | None = None  # the origin for a plain download
    hub_id: str | None = None  # the origin on the Hugging Face hub
    hub_files: tuple[str, ...] = ()  # files of hub_id that make up the entry
    sha256_prefix: str | None = None  # published with the file (torchvision's / OpenMMLab's name rule)
    size_mb: float | None = None
    licence: str | None = None
    target: str = "model"  # model: the whole model (heads of another shape re-initialised); backbone: its ResNet
    dataset: str = ""  # what the weights were trained on
    variant: str = ""  # yolov5: the model_size the entry is for
    # files with no hash in their name whose SHA-256 is known: (sha256, release, its URL) (ultralytics releases)
    known_sha256: tuple[tuple[str, str, str], ...] = ()
    # other files that serve the same model, tried after this one in the store and the caches (never downloaded)
    alternatives: tuple["WeightsEntry", ...] = ()

    @property
    def label(self) -> str:
        return f"{self.model_name} ({self.variant})" if self.variant else self.model_name

    @property
    def folder(self) -> bool:
        return self.file.endswith("/")

    @property
    def origin(self) -> str:
        return self.url or (f"hf://{self.hub_id}" if self.hub_id else "")

    def release_of(self, sha256: str | None) -> tuple[str, str] | None:
        """(release, URL) of a file whose hash is one of ``known_sha256``."""
        return next(((rel, url) for sha, rel, url in self.known_sha256 if sha == sha256), None)

    @property
    def hash_text(self) -> str:
        if self.sha256_prefix:
            return f"sha256 {self.sha256_prefix}… (published in the file name)"
        if self.library == "ultralytics":
            known = ", ".join(f"{rel} {sha[:16]}…" for sha, rel, _ in self.known_sha256)
            return (f"sha256 of the {known} release, or " if known else "sha256 ") + \
                "as recorded by `visionsweep weights pull` in a store's index"
        if self.hub_id:
            return "sha256 of the hub's LFS object (read when fetched)"
        return "none published"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hub_files"] = list(self.hub_files)
        d["hash"] = self.hash_text
        d["known_sha256"] = {sha: {"release": rel, "url": url} for sha, rel, url in self.known_sha256}
        d["alternatives"] = [a.as_dict() for a in self.alternatives]
        return d


@dataclass(frozen=True)
class NoPublishedWeights:
    """A model name whose weights the manifest cannot give here, and why (AutoMode and ``weights list`` say it)."""

    model_name: str
    why: str
    details: dict = field(default_factory=dict)


def _hash_prefix(url: str) -> str | None:
    m = HASH_IN_NAME.search(url.rsplit("/", 1)[-1])
    return m.group(1) if m and m.group(1) else None


def _torchvision(model_name: str, arch: str, weights_name: str = "IMAGENET1K_V1", target: str = "model",
                 dataset: str = "ImageNet-1K") -> WeightsEntry:
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    w = enum[weights_name]
    file = w.url.rsplit("/", 1)[-1]
    return WeightsEntry(model_name, "torchvision", f"{enum.__name__}.{w.name}", file, url=w.url,
                        sha256_prefix=_hash_prefix(w.url), size_mb=w.meta.get("_file_size"),
                        licence=TORCHVISION_LICENCE, target=target, dataset=dataset)


def _timm(model_name: str, arch: str) -> WeightsEntry:
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None or not cfg.hf_hub_id:
        raise VisionsweepError(f"timm publishes no pretrained weights for {arch} ({model_name})")
    return WeightsEntry(model_name, "timm", cfg.hf_hub_id.split("/", 1)[-1], f"{cfg.hf_hub_id}/{TIMM_HUB_FILE}",
                        hub_id=cfg.hf_hub_id, hub_files=(TIMM_HUB_FILE,), licence=cfg.license,
                        dataset=_timm_dataset(cfg.tag or ""))


def _timm_dataset(tag: str) -> str:
    if "in21k_ft_in1k" in tag:
        return "ImageNet-21K, fine-tuned on ImageNet-1K"
    return "ImageNet-1K" if "in1k" in tag else tag


def _classifier(model_name: str) -> WeightsEntry:
    from trainers.models.classifiers import get_entry

    e = get_entry(model_name)
    return _torchvision(model_name, e.arch) if e.source == "torchvision" else _timm(model_name, e.arch)


def _detector(model_name: str) -> WeightsEntry:
    from trainers.models.detectors import get_detector_entry

    e = get_detector_entry(model_name)
    coco = f"{e.family}_resnet{e.depth}_fpn"
    if e.depth == 50:  # torchvision publishes COCO weights for these three
        return _torchvision(model_name, coco, "COCO_V1", dataset="COCO 2017")
    return _torchvision(model_name, f"resnet{e.depth}", target="backbone")


def _openmmlab(model_name: str, settings: Mapping[str, Any]) -> WeightsEntry:
    from trainers.models import openmmlab as mm

    url = mm.checkpoint_url(model_name, dict(settings))
    yolo = model_name == mm.YOLO
    if not url:
        raise VisionsweepError(f"{model_name}: the {'mmyolo' if yolo else 'MMDetection'} metafiles publish no "
                               "checkpoint for this config")
    what = (mm.YOLO_CONFIGS[_yolo_size(settings)] if yolo
            else mm.config_path(model_name).stem)
    return WeightsEntry(model_name, "mmyolo" if yolo else "mmdetection", what, url.rsplit("/", 1)[-1], url=url,
                        sha256_prefix=_hash_prefix(url), licence=MMYOLO_LICENCE if yolo else MMDET_LICENCE,
                        dataset="COCO 2017", variant=_yolo_size(settings) if yolo else "")


def _yolo_size(settings: Mapping[str, Any]) -> str:
    size = str(settings.get("model_size") or hp.PARAMS["model_size"].default)
    return {"extra_large": "xlarge"}.get(size, size)


def _huggingface(model_name: str) -> WeightsEntry:
    ident = hub_id(model_name)
    return WeightsEntry(model_name, "huggingface", ident, f"{ident}/", hub_id=ident, hub_files=HF_FILES,
                        licence=None, dataset="see the model card")


def _yolov5(settings: Mapping[str, Any]) -> WeightsEntry:
    """ultralytics' release file of the model_size (the default release's URL; v6.0 to v7.0 files accepted), and
    mmyolo's zoo checkpoint of the same network as the alternative where mmyolo is installed."""
    from trainers.models.weights import ultralytics as ul

    size = _yolo_size(settings)
    file = ul.RELEASE_FILES[size]
    try:
        alternatives: tuple[WeightsEntry, ...] = (_openmmlab("yolov5", settings),)
    except VisionsweepError:  # mmyolo is not installed here: its metafiles cannot be read
        alternatives = ()
    known = tuple((sha, rel, ul.release_url(file, rel)) for sha, rel in ul.known_releases(file).items())
    # the label names no release: v6.0, v6.1 and v7.0 files are all accepted; the provenance of the file a trial
    # loads names its release, known by its hash
    return WeightsEntry("yolov5", ul.LIBRARY, f"YOLOv5 {file}", file,
                        url=ul.release_url(file), licence=ul.LICENCE, dataset="COCO 2017", variant=size,
                        known_sha256=known, alternatives=alternatives)


def entry(model_name: str, task: str | None = None, settings: Mapping[str, Any] | None = None) -> WeightsEntry:
    """The published weights of ``model_name`` (for ``yolov5``, of ``settings['model_size']``).

    ``task`` tells a classifier from a detector where a name could be either (it never is today)."""
    backend = hp.model_backend(model_name)
    if backend == "huggingface":
        return _huggingface(model_name)
    if model_name == "yolov5":
        return _yolov5(settings or {})
    if backend == "mmdetection":
        return _openmmlab(model_name, settings or {})
    if task in hp.BOX_TASKS or model_name in hp.DETECTION_MODELS or model_name in hp.SEGMENTATION_MODELS:
        return _detector(model_name)
    return _classifier(model_name)


def entries_for(model_name: str, task: str | None = None, model_sizes=None) -> list[WeightsEntry]:
    """Every entry a job naming ``model_name`` can need: ``yolov5`` has one per ``model_size``."""
    if model_name == "yolov5":
        sizes = model_sizes or [hp.PARAMS["model_size"].default]
        return [entry(model_name, task, {"model_size": s}) for s in dict.fromkeys(sizes)]
    return [entry(model_name, task)]


def zoo_names(task: str | None = None) -> list[tuple[str, str]]:
    """(task, model name) of the built-in zoo (§5.1), the curated models of §5.3 and ``yolov5``."""

    tasks = [task] if task else list(hp.TASKS)
    out: list[tuple[str, str]] = []
    for t in tasks:
        if t == hp.MULTILABEL and task is None:
            continue  # the same models as multi-class
        out += [(t, m) for m in hp.MODELS[t]]
        if t in hp.CLASSIFICATION_TASKS:
            out += [(t, hub) for hub in CURATED_HF.values()]
        else:
            out += [(t, m) for m in CURATED_MMDET.get(t, ())]
    return out


def listing(task: str | None = None, names: list[str] | None = None) -> list[WeightsEntry | NoPublishedWeights]:
    """The manifest rows of ``visionsweep weights list``: ``names`` (any model name), else the zoo of ``task``
    (or of every task); yolov5 once per model_size. A model whose library is missing here is listed with why."""
    pairs = [(task, n) for n in names] if names else zoo_names(task)
    out: list[WeightsEntry | NoPublishedWeights] = []
    seen = set()
    for t, name in pairs:
        sizes = ("small", "medium", "large", "extra_large") if name == "yolov5" else (None,)
        for size in sizes:
            try:
                e = entry(name, t, {"model_size": size} if size else None)
            except VisionsweepError as err:
                e = NoPublishedWeights(name if not size else f"yolov5 ({_yolo_size({'model_size': size})})",
                                       str(err).split(": ", 1)[-1] if "OpenMMLab" in str(err) else str(err))
            key = (getattr(e, "label", e.model_name), getattr(e, "file", None))
            if key not in seen:
                seen.add(key)
                out.append(e)
    return out


@functools.lru_cache(maxsize=None)
def known_file(file: str) -> WeightsEntry | None:
    """The built-in zoo's entry for a store file name (``weights verify`` checks a store's files by name)."""
    for t, name in zoo_names():
        if hp.model_backend(name) != "builtin":
            continue
        try:
            e = entry(name, t)
        except VisionsweepError:
            continue
        if e.file == file:
            return e
    return None
