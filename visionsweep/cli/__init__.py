"""The ``visionsweep`` command (:mod:`visionsweep.cli.main`); ``python -m visionsweep.cli`` runs it too."""

from visionsweep.cli.main import main

__all__ = ["main"]
