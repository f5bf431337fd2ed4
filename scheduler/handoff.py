"""The hand-off of a resumed sweep's Tune events from the callbacks Tune unpickled to the ones the resuming run started.

Tune pickles its callbacks with the experiment, and ``Tuner.restore`` runs those unpickled copies: the callbacks the
resuming run creates (with their threads, queues and clients, and the object whose ``stop``/``finish`` the run calls
at its end) are never given to Tune. A restored copy therefore starts nothing of its own and passes each Tune event
to the callback of the same class that this driver started for the same key (the run folder as the user named it);
with none started, the event is dropped. :class:`HandedOff` does this once for every callback that needs it, so
each callback class only says what it does with an event.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

from ray.tune import Callback

# Tune's hooks, as Tune's own Callback metaclass lists them: the ``on_*`` methods and ``setup``
EVENTS = frozenset(name for name, attr in vars(Callback).items()
                   if (name == "setup" or name.startswith("on_")) and callable(attr))

_CURRENT: dict[tuple[type, str], "HandedOff"] = {}  # (class, key) -> the callback this driver started for the key


class HandedOff(Callback):
    """A Tune callback whose unpickled copy hands its events to the live callback of its class and key.

    A subclass calls :meth:`claim` once its resources run, and :meth:`release` when it is done; it lists in
    ``transient`` the attributes a copy must not carry (threads, queues, clients, state read afresh), which are left
    out of the pickle and are ``None`` in a restored copy. Every Tune hook the subclass defines is wrapped so that a
    restored copy's call runs on the live callback instead (or not at all when there is none)."""

    transient: ClassVar[tuple[str, ...]] = ()
    restored = False  # True in a copy unpickled by Tune (a resumed sweep)
    handoff_key: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in EVENTS.intersection(vars(cls)):
            setattr(cls, name, _handed_off(vars(cls)[name]))

    def claim(self, key: str) -> None:
        """Be the callback that this class's events for ``key`` go to, restored copies' included."""
        self.handoff_key = key
        _CURRENT[(type(self), key)] = self

    def release(self) -> None:
        """Stop receiving restored copies' events (the run is ending); a later claim for the key is kept."""
        if _CURRENT.get((type(self), self.handoff_key)) is self:
            del _CURRENT[(type(self), self.handoff_key)]

    def handler(self) -> "HandedOff | None":
        """Who handles this callback's events: itself, or for a restored copy the live callback of its class and
        key (None: this driver started none, or it was released)."""
        if not self.restored:
            return self
        live = _CURRENT.get((type(self), self.handoff_key))
        return live if live is not self else None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self.transient and k != "restored"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.update(dict.fromkeys(self.transient))
        self.restored = True


def _handed_off(hook):
    """``hook`` run on the callback that handles the event (see :meth:`HandedOff.handler`)."""

    @functools.wraps(hook)
    def event(self: HandedOff, *args: Any, **kwargs: Any) -> Any:
        to = self.handler()
        return None if to is None else hook(to, *args, **kwargs)

    return event
