"""Where a model's initial weights come from, in this order, each step logged:

1. ``explicit``: ``visionsweep.pretrained_weights[model_name]`` (a file, a ``save_pretrained`` folder or a URL);
2. ``store``: a weights store, ``visionsweep.weights_store`` or ``$VISIONSWEEP_WEIGHTS_STORE``: a folder or any
   storage URL (``az://``, ``s3://`` ...) holding files under the manifest's names. This is how an air-gapped
   cluster gets them (``visionsweep weights pull`` fills one where there is internet);
3. ``cache``: the libraries' own caches, used as they are, offline: this node's weights cache,
   ``$TORCH_HOME/hub/checkpoints`` (torchvision's and mmengine's downloads; YOLOv5 release files also in
   ``$TORCH_HOME/hub`` itself), the Hugging Face cache;
4. ``origin``: the URL or hub repository the library downloads from, only while ``visionsweep.download_weights``.

An entry's ``alternatives`` (``yolov5``: mmyolo's zoo checkpoint beside ultralytics' release file) are looked for
right after it in each of the first three sources, never downloaded.

Each source is a small class with ``find`` (is it there? cheap, no download) and ``fetch`` (a local path on this
node); the driver calls ``find`` for every model before any trial, the trials call ``fetch`` on their node.
Anything fetched from a remote store or the origin lands in the node's weights cache under a lock, so a node
fetches a model's weights once, however many trials start at the same time. Every file is checked against
the manifest's hash before use (:mod:`trainers.models.weights.verify`).

Network access is bounded: probing and downloading use a connect/read timeout
(``$VISIONSWEEP_WEIGHTS_TIMEOUT_S``, 10 s), and name resolution runs under the same bound, so a job on a
machine without network fails within seconds instead of hanging.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

from trainers.data.images import default_cache_dir
from trainers.data.storage import call_with_retries, filesystem
from trainers.data.urls import is_remote, join
from trainers.errors import VisionsweepError, close_names
from trainers.models.weights import verify as check
from trainers.models.weights.initial import InitialWeights, public
from trainers.models.weights.manifest import WeightsEntry
from trainers.progress import Progress

log = logging.getLogger("trainers.models.weights")

STORE_ENV = "VISIONSWEEP_WEIGHTS_STORE"
TIMEOUT_ENV = "VISIONSWEEP_WEIGHTS_TIMEOUT_S"
# For tests only: origin URL prefixes rewritten to a local HTTP server ("https://a/=http://127.0.0.1:1234/,...")
ORIGIN_OVERRIDE_ENV = "VISIONSWEEP_WEIGHTS_ORIGIN_OVERRIDE"
DEFAULT_TIMEOUT_S = 10.0
WEIGHTS_DIR = "weights"  # inside the node cache folder (visionsweep.cache.dir)


class WeightsError(VisionsweepError):
    """Initial weights that cannot be had or cannot be trusted (missing everywhere, a hash mismatch).
    ``models``: the model names it is about, where known (the job check puts their YAML lines in front)."""

    def __init__(self, message: str, models: tuple[str, ...] = ()):
        super().__init__(message)
        self.models = tuple(models)


@dataclass(frozen=True)
class WeightsConfig:
    """What a job says about initial weights, resolved on the driver and handed to every trial (no secrets:
    storage credentials come from the environment, as for images)."""

    pretrained: bool = True
    explicit: tuple[tuple[str, str], ...] = ()  # model_name -> path or URL
    store: str | None = None
    storage_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    download: bool = True
    cache_dir: str = ""
    timeout_s: float = DEFAULT_TIMEOUT_S
    origin_override: tuple[tuple[str, str], ...] = ()
    seen: tuple[tuple[str, str], ...] = ()  # entry file -> a local cache path the driver found it at

    @classmethod
    def create(cls, *, pretrained: bool = True, explicit: Mapping[str, str] | None = None, store: str | None = None,
               storage_options=None, download: bool = True, cache_dir: str | None = None) -> "WeightsConfig":
        return cls(pretrained=pretrained, explicit=tuple(sorted((explicit or {}).items())),
                   store=store or os.environ.get(STORE_ENV) or None, storage_options=dict(storage_options or {}),
                   download=download, cache_dir=cache_dir or default_cache_dir(),
                   timeout_s=float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S),
                   origin_override=_parse_override(os.environ.get(ORIGIN_OVERRIDE_ENV, "")))

    @property
    def weights_cache(self) -> Path:
        return Path(self.cache_dir) / WEIGHTS_DIR

    def origin_url(self, url: str) -> str:
        for prefix, replacement in self.origin_override:
            if url.startswith(prefix):
                return replacement + url[len(prefix):]
        return url

    def with_seen(self, seen: Mapping[str, str]) -> "WeightsConfig":
        return replace(self, seen=tuple(sorted({**dict(self.seen), **seen}.items())))


def _parse_override(text: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        prefix, sep, to = item.partition("=")
        if not sep:
            raise VisionsweepError(f"{ORIGIN_OVERRIDE_ENV}: expected PREFIX=REPLACEMENT pairs, but got {item!r}")
        pairs.append((prefix, to))
    return tuple(pairs)


@dataclass(frozen=True)
class Located:
    """Where ``find`` saw an entry: the source's name, the place (a path or URL) and what kind of place."""

    source: str  # explicit | store | cache | origin
    where: str
    detail: str = ""
    entry: WeightsEntry | None = None  # the entry found there: the one asked for or one of its alternatives


# ---------------------------------------------------------------------------------------------- the sources

class Source:
    """One place weights can come from."""

    name = ""

    def places(self, entry: WeightsEntry, cfg: WeightsConfig) -> list[str]:
        """The places this source looks in, for the log and for the error when nothing had them."""
        return []

    def find(self, entry: WeightsEntry, cfg: WeightsConfig, probe: bool = True) -> Located | None:
        raise NotImplementedError

    def fetch(self, entry: WeightsEntry, found: Located, cfg: WeightsConfig) -> InitialWeights:
        raise NotImplementedError


class Explicit(Source):
    """``visionsweep.pretrained_weights``, or a Hugging Face model named by its own folder."""

    name = "explicit"

    def _given(self, entry: WeightsEntry, cfg: WeightsConfig) -> tuple[str, str] | None:
        given = dict(cfg.explicit).get(entry.model_name)
        if given:
            return given, "visionsweep.pretrained_weights"
        if entry.library == "huggingface" and not is_remote(entry.model_name) and Path(entry.model_name).is_dir():
            return entry.model_name, "the folder model_name names"
        return None

    def places(self, entry, cfg):
        g = self._given(entry, cfg)
        return [f"{g[1]} ({public(g[0])})"] if g else []

    def find(self, entry, cfg, probe=True):
        g = self._given(entry, cfg)
        if g and _exists(g[0], cfg):
            # a file under an alternative's name (a yolov5 zoo checkpoint) is checked as that one
            named = next((a for a in entry.alternatives if _basename(g[0]) == Path(a.file).name), None)
            return Located(self.name, g[0], g[1], named)
        return None

    def fetch(self, entry, found, cfg):
        path = found.where.removeprefix("file://")
        if is_remote(found.where):
            path = str(_fetch_remote(found.where, cfg.weights_cache / "explicit" / _url_key(found.where), cfg,
                                     folder=entry.folder))
        # the user's own file: checked only when it claims to be the published one (the manifest's file name)
        if Path(path).is_file() and Path(path).name == Path(entry.file).name and entry.sha256_prefix:
            return _verified(entry, self.name, path, found.where, cfg)
        sha = _sha_of(path, cfg)
        # a YOLOv5 release file is read without running its code: any one is taken, marked verified when known
        return InitialWeights(entry.model_name, self.name, path, found.where, entry, sha,
                              verified=bool(entry.release_of(sha)))


class Store(Source):
    """A weights store: files under the manifest's names, in a folder or at a storage URL."""

    name = "store"

    def places(self, entry, cfg):
        return [f"the weights store {public(join(cfg.store, entry.file))}"] if cfg.store else []

    def find(self, entry, cfg, probe=True):
        if not cfg.store:
            return None
        where = join(cfg.store, entry.file.rstrip("/"))
        probe_path = join(where, "config.json") if entry.folder else where
        return Located(self.name, where, "weights store") if _exists(probe_path, cfg) else None

    def fetch(self, entry, found, cfg):
        index = check.read_store_index(cfg.store, cfg.storage_options)
        path = found.where
        if is_remote(found.where):
            path = str(_fetch_remote(found.where, cfg.weights_cache / entry.file.rstrip("/"), cfg, folder=entry.folder,
                                     entry=entry, index=index))
        return _verified(entry, self.name, path, found.where, cfg, index=index)


class Caches(Source):
    """The libraries' own caches on this node, and this node's weights cache."""

    name = "cache"

    def _candidates(self, entry: WeightsEntry, cfg: WeightsConfig) -> list[tuple[str, str]]:
        out = [(str(cfg.weights_cache / entry.file.rstrip("/")), "this node's weights cache")]
        if entry.url:
            out.append((str(_torch_checkpoints() / entry.file), "the torch hub cache"))
        if entry.library == "ultralytics":  # YOLOv5 releases also land in the hub folder itself
            out.append((str(_torch_checkpoints().parent / entry.file), "the torch hub folder"))
        seen = dict(cfg.seen).get(entry.file)
        if seen:
            out.append((seen, "the cache the driver found it in"))
        return out

    def places(self, entry, cfg):
        out = [f"{what} ({p})" for p, what in self._candidates(entry, cfg)]
        if entry.hub_id:
            out.append(f"the Hugging Face cache ({_hf_cache_dir()})")
        return out

    def find(self, entry, cfg, probe=True):
        for p, what in self._candidates(entry, cfg):
            if Path(p, "config.json").is_file() if entry.folder else Path(p).is_file():
                return Located(self.name, p, what)
        if entry.hub_id:
            p = _hf_cached(entry)
            if p:
                return Located(self.name, p, "the Hugging Face cache")
        return None

    def fetch(self, entry, found, cfg):
        # the node's weights cache indexes the files it downloaded whose hash is published nowhere (Origin.fetch)
        return _verified(entry, self.name, found.where, found.where, cfg,
                         index=check.read_store_index(str(cfg.weights_cache)))


def local_places(cfg: WeightsConfig) -> list[str]:
    """Where :class:`Store` and :class:`Caches` look on this machine, named for a reader (``weights list``)."""
    return ([f"the weights store {public(cfg.store)}"] if cfg.store else []) + [
        f"this node's weights cache ({cfg.weights_cache})", f"the torch hub cache ({_torch_checkpoints().parent})",
        f"the Hugging Face cache ({_hf_cache_dir()})"]


class Origin(Source):
    """The URL or hub repository the library itself downloads from; only with ``download_weights``."""

    name = "origin"

    def places(self, entry, cfg):
        if not cfg.download:
            return []
        if entry.url:
            return [f"the origin {cfg.origin_url(entry.url)}"]
        return [f"the Hugging Face hub ({entry.hub_id})"] if entry.hub_id else []

    def find(self, entry, cfg, probe=True):
        if not cfg.download or not entry.origin:
            return None
        if entry.url:
            url = cfg.origin_url(entry.url)
            reason = probe_url(url, cfg.timeout_s) if probe else None
            if reason:
                raise _Unreachable(f"the origin {url}: {reason}")
            return Located(self.name, url, "origin")
        if _hf_offline():
            raise _Unreachable(f"the Hugging Face hub ({entry.hub_id}): HF_HUB_OFFLINE is set")
        first = entry.hub_files[-1] if entry.folder else entry.hub_files[0]
        reason = probe_url(_hf_url(entry.hub_id, first), cfg.timeout_s) if probe else None
        if reason:
            raise _Unreachable(f"the Hugging Face hub ({entry.hub_id}): {reason}")
        return Located(self.name, f"hf://{entry.hub_id}", "Hugging Face hub")

    def fetch(self, entry, found, cfg):
        if entry.url:
            dest = cfg.weights_cache / entry.file
            with _lock(cfg, entry.file):
                if not dest.is_file():
                    log.info("%s: downloading %s", entry.label, found.where)
                    download(found.where, dest, cfg.timeout_s)
                    if not entry.sha256_prefix:
                        _record_download(entry, dest, found.where, cfg)
            return _verified(entry, self.name, str(dest), found.where, cfg,
                             index=check.read_store_index(str(cfg.weights_cache)))
        path = _hf_download(entry, cfg)
        return _verified(entry, self.name, path, found.where, cfg)


class _Unreachable(Exception):
    """An origin that did not answer: a place looked in, with the reason, not an error by itself."""


SOURCES: tuple[Source, ...] = (Explicit(), Store(), Caches(), Origin())


# ------------------------------------------------------------------------------------------------- find / fetch

def locate(entry: WeightsEntry, cfg: WeightsConfig, probe: bool = True) -> tuple[Located | None, list[str]]:
    """The first source that has ``entry`` (or, in the store and the caches, one of its alternatives), and every
    place looked in (with why an origin did not answer). ``Located.entry`` says which entry was found."""
    looked: list[str] = []
    for src in SOURCES:
        for want in (entry,) if isinstance(src, (Explicit, Origin)) else (entry, *entry.alternatives):
            try:
                found = src.find(want, cfg, probe)
            except _Unreachable as e:
                looked.append(str(e))
                continue
            if found is not None:
                found = replace(found, entry=found.entry or want)
                # DEBUG: run says where each model's weights are once, in its ``weights:`` line, and a trial in
                # "starting from" (AutoMode and validate look the same file up several times before that)
                log.debug("%s: %s found in %s (%s)", entry.label, found.entry.file, found.detail or src.name,
                          public(found.where))
                return found, looked
            looked += [f"{p}: not there" for p in src.places(want, cfg)]
    if not cfg.download and entry.origin:
        looked.append("the origin: not asked (visionsweep.download_weights: false)")
    return None, looked


def fetch(entry: WeightsEntry, cfg: WeightsConfig) -> InitialWeights:
    """The weights on this node, fetched and checked; ``WeightsError`` naming every place looked otherwise."""
    found, looked = locate(entry, cfg, probe=False)
    if found is None:
        raise WeightsError(missing_message([(entry, looked)], cfg))
    src = next(s for s in SOURCES if s.name == found.source)
    entry = found.entry or entry
    init = src.fetch(entry, found, cfg)
    log.info("%s: starting from %s (%s%s)", entry.label, entry.file, found.detail or found.source,
             f", sha256 {init.sha256[:12]}…" if init.sha256 else "")
    return init


def missing_message(missing: list[tuple[WeightsEntry, list[str]]], cfg: WeightsConfig) -> str:
    lines = ["no pretrained weights for " + ", ".join(e.label for e, _ in missing) + " (models start from their "
             "published weights unless the job says visionsweep.pretrained: false):"]
    hub_ids = None
    for e, looked in missing:
        alt = "".join(f" or {a.file}" for a in e.alternatives)
        lines.append(f"  {e.label} needs {e.file}{alt} ({e.weights}, {e.hash_text}); looked in:")
        lines += [f"    - {w}" for w in looked]
        if e.library == "huggingface" and e.hub_id:  # a misspelt hub id is found nowhere: name the near ones
            hub_ids = known_hub_ids(cfg) if hub_ids is None else hub_ids
            close = close_names(e.hub_id, hub_ids, n=1, cutoff=HUB_ID_CUTOFF)
            if close:
                lines.append(f"  {e.model_name}: did you mean {close[0]}? (a Hugging Face model known on this "
                             "machine: curated, or in the Hugging Face cache, the weights store or the weights cache)")
    names = " ".join(sorted({_quote(e.model_name) for e, _ in missing}))
    to = cfg.store or "DIR_OR_URL"
    lines.append(f"  fill a weights store where there is internet: visionsweep weights pull {names} --to {to}, "
                 f"then give it as visionsweep.weights_store or ${STORE_ENV}")
    return "\n".join(lines)


# hub ids share long prefixes ("google/vit-base-patch16-"): only a much nearer one is offered
HUB_ID_CUTOFF = 0.8


def known_hub_ids(cfg: WeightsConfig) -> list[str]:
    """Hugging Face model ids known on this machine without asking the hub: the curated ones (§5.3), the
    Hugging Face cache's models, and the ``org/name/`` folders of a local weights store and of this node's
    weights cache (the manifest's form of a hub model in a store)."""
    from trainers.models.names import CURATED_HF

    out = list(CURATED_HF.values())
    hf = Path(_hf_cache_dir())
    with contextlib.suppress(OSError):
        out += [d.name.removeprefix("models--").replace("--", "/", 1) for d in hf.iterdir()
                if d.name.startswith("models--")]
    for root in (cfg.store if cfg.store and not is_remote(cfg.store) else None, str(cfg.weights_cache)):
        if root:
            with contextlib.suppress(OSError):
                out += [f"{c.parent.parent.name}/{c.parent.name}"
                        for c in Path(root.removeprefix("file://")).glob("*/*/config.json")]
    return list(dict.fromkeys(out))


def _quote(s: str) -> str:
    return s if all(c.isalnum() or c in "-_./" for c in s) else f"'{s}'"


# ----------------------------------------------------------------------------------------------- helpers

def _exists(where: str, cfg: WeightsConfig) -> bool:
    if not is_remote(where):
        return os.path.exists(where.removeprefix("file://"))

    fs, path = filesystem(where, cfg.storage_options)
    return bool(call_with_retries(lambda: fs.exists(path), where, fs, cfg.storage_options))


def _basename(where: str) -> str:
    return where.rstrip("/").rsplit("/", 1)[-1]


def _record_download(entry: WeightsEntry, dest: Path, url: str, cfg: WeightsConfig) -> None:
    """A file whose publisher gives no hash, as downloaded from its origin (HTTPS): its SHA-256 goes into the node
    cache's index, which checks it from then on (as ``weights pull`` records it in a store's)."""
    sha = check.sha256_cached(dest, cfg.weights_cache)
    with _lock(cfg, check.STORE_INDEX):
        check.record(cfg.weights_cache, entry.file, {"sha256": sha, "size": dest.stat().st_size, "origin": url,
                                                     "weights": entry.weights, "models": [entry.label]})


def _url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16] + "-" + url.rstrip("/").rsplit("/", 1)[-1]


@contextlib.contextmanager
def _lock(cfg: WeightsConfig, key: str) -> Iterator[None]:
    """An exclusive lock per weights file on this node: concurrent trials (processes) fetch it once."""
    locks = cfg.weights_cache / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _fetch_remote(url: str, dest: Path, cfg: WeightsConfig, folder: bool = False, entry: WeightsEntry | None = None,
                  index: Mapping[str, Any] | None = None) -> Path:
    """Copy a file (or a folder's files) from storage into the node cache, once per node."""

    fs, path = filesystem(url, cfg.storage_options)
    with _lock(cfg, str(dest)):
        if folder:
            if not (dest / "config.json").is_file():
                names = [p.rsplit("/", 1)[-1] for p in call_with_retries(lambda: fs.ls(path, detail=False), url,
                                                                         fs, cfg.storage_options)]
                tmp = Path(tempfile.mkdtemp(dir=_parent(dest), prefix=".fetch-"))
                with Progress(f"fetching {dest.name}/", len(names)) as progress:
                    for n in names:
                        call_with_retries(lambda n=n: fs.get_file(f"{path.rstrip('/')}/{n}", str(tmp / n)), url,
                                          fs, cfg.storage_options)
                        progress.update(1, nbytes=(tmp / n).stat().st_size)
                _replace_dir(tmp, dest)
        elif not dest.is_file():
            log.info("fetching %s into this node's weights cache", public(url))
            fd, tmp = tempfile.mkstemp(dir=_parent(dest), prefix=".fetch-")
            os.close(fd)
            try:
                with Progress(f"fetching {dest.name}", None, "bytes") as progress:
                    call_with_retries(lambda: fs.get_file(path, tmp, callback=_transfer_callback(progress)), url,
                                      fs, cfg.storage_options)
                os.replace(tmp, dest)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
    return dest


def _transfer_callback(progress: Progress):
    """A fresh fsspec transfer callback feeding ``progress`` (bytes) for one attempt of a transfer: the size when
    the filesystem learns it, each block as it lands. Made per attempt, and the count starts again from zero, so
    a retried transfer does not count its bytes twice. (Async filesystems call it from their I/O thread.)"""
    from fsspec.callbacks import Callback

    progress.reset()

    class _Feed(Callback):
        reported = 0

        def call(self, *args, **kwargs):
            if self.size and not progress.total:
                progress.total = int(self.size)
            value = int(self.value or 0)
            if value > self.reported:
                progress.update(value - self.reported)
                self.reported = value

    return _Feed()


def _parent(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest.parent


def _replace_dir(tmp: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def download(url: str, dest: Path, timeout_s: float) -> None:
    """A plain HTTP(S) download to ``dest`` (temp file, then rename), with a bounded connect/read timeout."""
    fd, tmp = tempfile.mkstemp(dir=_parent(dest), prefix=".download-")
    try:
        with os.fdopen(fd, "wb") as f, _urlopen(url, timeout_s) as r:
            length = r.headers.get("Content-Length")
            # a detector's weights are hundreds of MB: a minute of silence otherwise
            with Progress(f"downloading {dest.name}", int(length) if length and length.isdigit() else None,
                          "bytes") as progress:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    progress.update(len(chunk))
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as e:
        raise WeightsError(f"{url}: download failed ({getattr(e, 'reason', None) or e})") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _urlopen(url: str, timeout_s: float, method: str = "GET"):
    req = urllib.request.Request(url, method=method, headers={"User-Agent": "visionsweep"})
    return urllib.request.urlopen(req, timeout=timeout_s)


def probe_url(url: str, timeout_s: float) -> str | None:
    """None when ``url`` answers a HEAD request; else why not. Bounded by ``timeout_s`` in all (the DNS lookup,
    which socket timeouts do not cover, included)."""
    out: list[str | None] = []
    silent = f"no answer within {timeout_s:g}s (${TIMEOUT_ENV})"

    def ask() -> None:
        try:
            with _urlopen(url, timeout_s, "HEAD"):
                out.append(None)
        except urllib.error.HTTPError as e:
            out.append(f"HTTP {e.code}")
        except Exception as e:  # noqa: BLE001 - DNS, refused, TLS, timeout: all mean "not from here"
            reason = getattr(e, "reason", None) or e
            out.append(silent if isinstance(reason, TimeoutError) else str(reason) or type(e).__name__)

    t = threading.Thread(target=ask, daemon=True, name="visionsweep-weights-probe")
    t.start()
    t.join(timeout_s + 1)
    return out[0] if out else silent


def _torch_checkpoints() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _hf_cache_dir() -> str:
    """The Hugging Face cache as this process's environment names it now (huggingface_hub reads it at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except ImportError:
        return os.path.expanduser("~/.cache/huggingface/hub")


def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _hf_url(repo: str, file: str) -> str:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    return f"{endpoint}/{repo}/resolve/main/{file}"


def _hf_cached(entry: WeightsEntry) -> str | None:
    """The entry's file (or its folder) in the Hugging Face cache, without asking the hub."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    cache = _hf_cache_dir()
    if not entry.folder:
        p = try_to_load_from_cache(entry.hub_id, entry.hub_files[0], cache_dir=cache)
        return p if isinstance(p, str) else None
    config = try_to_load_from_cache(entry.hub_id, "config.json", cache_dir=cache)
    if not isinstance(config, str):
        return None
    folder = Path(config).parent
    return str(folder) if check.weight_files(folder) else None


def _hf_download(entry: WeightsEntry, cfg: WeightsConfig) -> str:
    """The hub's files into the Hugging Face cache (huggingface_hub locks each file: one download per node)."""
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(cfg.timeout_s)))
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(int(cfg.timeout_s)))
    from huggingface_hub import snapshot_download

    try:
        cache = _hf_cache_dir()
        if entry.folder:
            return snapshot_download(entry.hub_id, allow_patterns=["*.json", "*.safetensors"], cache_dir=cache)
        return str(Path(snapshot_download(entry.hub_id, allow_patterns=list(entry.hub_files), cache_dir=cache))
                   / entry.hub_files[0])
    except Exception as e:  # noqa: BLE001 - the hub's errors, named with the repository
        raise WeightsError(f"{entry.label}: cannot download {entry.hub_id} from the Hugging Face hub "
                           f"({str(e).splitlines()[0][:200]})") from None


def _sha_of(path: str, cfg: WeightsConfig) -> str | None:
    return check.sha256_cached(path, cfg.weights_cache) if Path(path).is_file() else None


def _verified(entry: WeightsEntry, source: str, path: str, where: str, cfg: WeightsConfig,
              index: Mapping[str, Any] | None = None) -> InitialWeights:
    sha = check.verify_entry(entry, path, cfg.weights_cache, index or {})
    return InitialWeights(entry.model_name, source, path, where, entry, sha, verified=True)
