"""Storage credentials from the environment, carried from the job's driver to its trials without being shown.

adlfs and s3fs read credentials from the environment (``AZURE_STORAGE_*``, ``AZURE_CLIENT_*``,
``AWS_*``). Trial processes do not always share the driver's environment: an embedded Ray started
earlier, or a cluster joined through ``RAY_ADDRESS``, starts workers from its raylets' environment.
:class:`EnvCredentials` takes the driver's storage variables and travels through Ray's object store
(``tune.with_parameters``), never through anything Ray's dashboard shows (a trial's config, a job's
runtime_env, a Train run's config); its ``repr`` names the variables, never their values. In a trial,
:meth:`EnvCredentials.apply` fills in only variables the node does not set itself, so a node's own
identity (or credentials given in the Ray job's runtime_env) wins.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from trainers.data.storage import clear_cache

STORAGE_ENV = re.compile(r"^(AZURE_|AWS_)")


@dataclass(frozen=True)
class EnvCredentials:
    values: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_environ(cls) -> "EnvCredentials":
        return cls(tuple(sorted((k, v) for k, v in os.environ.items() if STORAGE_ENV.match(k))))

    def apply(self) -> None:
        changed = False
        for k, v in self.values:
            if k not in os.environ:
                os.environ[k] = v
                changed = True
        if changed:  # filesystems made before these were set must not be reused

            clear_cache()

    def __repr__(self) -> str:
        return f"EnvCredentials({', '.join(k for k, _ in self.values) or 'none'})"

    __str__ = __repr__
