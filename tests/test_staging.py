"""A checkpoint staging folder left by a killed trial process is reclaimed by the next trial on the node."""

import subprocess
import sys
import textwrap
from pathlib import Path

from trainers.staging import reclaim, staging_dir

MAKE_AND_HANG = textwrap.dedent("""
    import sys, pathlib
    from trainers.staging import staging_dir
    with staging_dir(sys.argv[1]) as d:
        (pathlib.Path(d) / "model.safetensors").write_bytes(b"x" * 1024)
        print(d, flush=True)
        sys.stdin.read()  # blocked as a stopped trial is inside tune.report
""")


def test_a_killed_trials_folder_is_removed_and_a_live_ones_is_kept(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", MAKE_AND_HANG, str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    left = Path(proc.stdout.readline().strip())
    live = subprocess.Popen([sys.executable, "-c", MAKE_AND_HANG, str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    kept = Path(live.stdout.readline().strip())
    unrelated = tmp_path / "visionsweep-cache"
    unrelated.mkdir()
    proc.kill()
    proc.wait()
    try:
        assert left.exists()  # SIGKILL: the with-block never ran its cleanup
        with staging_dir(tmp_path) as mine:
            assert reclaim(tmp_path) == 1
            assert not left.exists()
            assert kept.exists() and Path(mine).exists() and unrelated.exists()
    finally:
        live.stdin.close()
        live.wait()
    assert not kept.exists()  # a process that ends normally removes its own
