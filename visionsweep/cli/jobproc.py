"""The process of a job submitted by ``MLClient.jobs`` without a Ray Jobs address: ``visionsweep run`` on the job
folder's ``job.yml``, its exit status written to ``rc`` when it ends (so any later client, in any process, can say
whether the job completed, failed or was cancelled)."""

from __future__ import annotations

import sys
from pathlib import Path


def main(folder: str, output: str) -> int:
    from visionsweep.cli import main as cli

    rc = 1
    try:
        rc = cli(["run", str(Path(folder) / "job.yml"), "--output", output])
    finally:
        (Path(folder) / "rc").write_text(f"{rc}\n")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
