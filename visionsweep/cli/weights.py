"""``visionsweep weights``: the pretrained-weights manifest and weights stores.

    visionsweep weights list [NAME...] [--task T] [--local] [--store STORE] [--json]
                                                  what each model starts from, and where this machine has it
    visionsweep weights pull NAME... [--task T] [--to STORE]   fill a store (where there is internet)
    visionsweep weights verify STORE                           check a store's files against their hashes

A store is a folder or a storage URL (credentials from the environment, as for images); ``--to`` and ``--store``
default to ``$VISIONSWEEP_WEIGHTS_STORE``.
"""

from __future__ import annotations

import json
import sys

from trainers import hyperparameters as hp
from trainers.errors import VisionsweepError
from trainers.models.weights.local import describe, found_here
from trainers.models.weights.manifest import NoPublishedWeights, entries_for, listing, zoo_names
from trainers.models.weights.sources import STORE_ENV, WeightsConfig
from trainers.models.weights.store import pull, verify_store


def _list(args) -> int:
    rows = listing(args.task, args.names or None)
    local, places = found_here(rows, args.store, warn=lambda s: print(s, file=sys.stderr))
    have, total = sum(1 for f in local if f), len(rows)
    if args.local:
        rows, local = [r for r, f in zip(rows, local) if f], [f for f in local if f]
    if args.json:
        print(json.dumps([{**r.as_dict(), "local": describe(f)} if not isinstance(r, NoPublishedWeights) else
                          {"model_name": r.model_name, "unavailable": r.why, "local": None}
                          for r, f in zip(rows, local)], indent=2))
        return 0
    for r, found in zip(rows, local):
        if isinstance(r, NoPublishedWeights):
            print(f"{r.model_name}\n    unavailable here: {r.why}")
            continue
        size = f"{r.size_mb:.1f} MB" if r.size_mb else "size not published"
        print(f"{r.label}{'  [here]' if found else ''}\n    {r.library} {r.weights} ({r.dataset}; "
              f"{r.licence or 'licence: see the model card'})"
              f"\n    file {r.file}  ({size}; {r.hash_text})\n    origin {r.origin}"
              + ("\n    loads into the backbone; FPN and heads start fresh" if r.target == "backbone" else ""))
        for sha, release, url in r.known_sha256:
            print(f"    known  {release} {r.file}  sha256 {sha}  ({url})")
        for a in r.alternatives:
            print(f"    or     {a.library} {a.weights}: file {a.file}  ({a.hash_text})\n           origin {a.origin}")
        if found:
            here = describe(found)
            alt = f"{here['file']} " if here["file"] != r.file else ""
            print(f"    here   {alt}{here['where']}  ({here['found_in']})")
        else:
            print("    here   not on this machine")
    print(f"\n{have} of {total} on this machine; looked in " + ", ".join(places))
    return 0


def _entries(args):
    names = [(args.task, n) for n in args.names] or zoo_names(args.task)
    if not names:
        raise VisionsweepError("weights pull: name the models (or --task T for every model of a task)")
    out = []
    for task, name in names:
        try:
            out += entries_for(name, task, args.model_size or None)
        except VisionsweepError as e:
            if args.names:
                raise VisionsweepError(f"weights pull {name}: {e}") from None
            print(f"skipped {name}: {e}", file=sys.stderr)
    return out


def _config(store: str | None = None):
    return WeightsConfig.create(store=store, download=True)


def _pull(args) -> int:
    import os

    to = args.to or os.environ.get(STORE_ENV)
    if not to:
        raise VisionsweepError(f"weights pull: give --to DIR_OR_URL (or set ${STORE_ENV})")
    pull(_entries(args), to, _config(), echo=lambda s: print(s, file=sys.stderr))
    print(to)
    return 0


def _verify(args) -> int:
    r = verify_store(args.store, _config(), echo=print)
    print(f"{len(r['ok'])} ok, {len(r['mismatch'])} mismatched, {len(r['unchecked'])} without a hash to check")
    return 0


def add_parsers(sub) -> None:
    w = sub.add_parser("weights", help="the pretrained weights each model starts from; fill and check weights stores")
    ws = w.add_subparsers(dest="weights_command", required=True)
    tasks = list(hp.TASKS)
    ls = ws.add_parser("list", help="the weights manifest: per model, the file, origin, hash, size and licence")
    ls.add_argument("names", nargs="*", metavar="NAME",
                    help="model names (default: the zoo of --task, or of all tasks)")
    ls.add_argument("--task", choices=tasks)
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.add_argument("--local", action="store_true",
                    help="only the weights already on this machine (weights store, weights cache, torch hub and "
                         "Hugging Face caches)")
    ls.add_argument("--store", metavar="DIR_OR_URL",
                    help="a weights store to look in too (default: $VISIONSWEEP_WEIGHTS_STORE)")
    ls.set_defaults(fn=_list)
    pl = ws.add_parser("pull", help="put models' weights into a store (on a machine with internet)")
    pl.add_argument("names", nargs="*", metavar="NAME", help="model names (default: every model of --task)")
    pl.add_argument("--task", choices=tasks)
    pl.add_argument("--to", metavar="DIR_OR_URL", help="the store (default: $VISIONSWEEP_WEIGHTS_STORE)")
    pl.add_argument("--model-size", action="append", choices=("small", "medium", "large", "extra_large", "xlarge"),
                    help="yolov5: the model_size(s) to pull (default: medium)")
    pl.set_defaults(fn=_pull)
    vf = ws.add_parser("verify", help="check a store's files against their published hashes and its index")
    vf.add_argument("store", metavar="DIR_OR_URL")
    vf.set_defaults(fn=_verify)
