"""What a model starts from, once found on this node: a leaf module the model builders import.

``InitialWeights`` carries the local path of the weights (a file, or a Hugging Face model's folder), where they were
found and what they are (the manifest's entry), and the hash they were checked against; ``provenance()`` is what
a model package, the run folder and MLflow record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainers.data.storage import scrub_secrets

if TYPE_CHECKING:
    from trainers.models.weights.manifest import WeightsEntry


@dataclass(frozen=True)
class InitialWeights:
    """The weights a trial starts from, on this node, with their provenance (recorded in the model package)."""

    model_name: str
    source: str  # explicit | store | cache | origin | package (checkpoint_run_id)
    path: str  # a local file, or a folder (Hugging Face models, packages)
    location: str  # where they were found (a path or URL; the driver's and the log's wording)
    entry: WeightsEntry | None = None
    sha256: str | None = None  # of the weights file as loaded (None for a folder's several files)
    verified: bool = False  # checked against the manifest's (or the hub's) hash

    @property
    def target(self) -> str:
        return self.entry.target if self.entry else "model"

    def provenance(self) -> dict[str, Any]:
        e = self.entry
        # a YOLOv5 release file known by its hash names its own release (v6.0 ...) and that release's URL
        release = e.release_of(self.sha256) if e else None
        out = {"model_name": self.model_name, "source": self.source, "location": public(self.location),
               "file": e.file if e else Path(self.path).name, "weights": e.weights if e else None,
               "library": e.library if e else None, "origin": release[1] if release else e.origin if e else None,
               "sha256": self.sha256, "verified": self.verified, "dataset": e.dataset if e else None,
               "licence": e.licence if e else None}
        if release:
            out["release"] = release[0]
            out["weights"] = f"{e.weights} ({release[0]} release)"
        return out


def public(where: str) -> str:
    """A place as the logs and the run folder may show it: credentials inside URLs as ``***``."""

    return scrub_secrets(where)


def is_pretrained(weights: Any) -> bool:
    """Whether a model is being built from published pretrained weights (detectors then freeze BatchNorm)."""
    return isinstance(weights, InitialWeights) and weights.source not in ("none", "package")
