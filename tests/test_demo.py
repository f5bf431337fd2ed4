"""The demo's own pieces (``scheduler/demo.py``); the whole demo is ``make demo``."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.ray

# A driver as the demo's: an embedded Ray, Serve's proxy on a free port, one application answering over HTTP,
# then Serve stopped as the demo stops it; it prints what is left afterwards.
DRIVER = textwrap.dedent("""\
    import socket, urllib.request

    import ray
    from ray import serve
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    from cluster.connect import connect
    from scheduler.demo import stop_serve
    from serving.connection import start_serve

    connect(num_cpus=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start_serve("127.0.0.1", port, detached=False)

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    def hello(request):
        return "hello"

    serve.run(hello.bind(), name="demo", route_prefix="/demo")
    print("answer:", urllib.request.urlopen(f"http://127.0.0.1:{port}/demo", timeout=60).read().decode())
    stop_serve()
    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        print("controller: still there")
    except ValueError:
        print("controller: gone")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        print("proxy: still listening")
    except OSError:
        print("proxy: gone")
    ray.shutdown()
""")


def test_the_demo_stops_serve_without_rays_retry_line():
    # serve.shutdown() leaves "(raylet) Task ServeController.graceful_shutdown failed. There are infinite retries
    # remaining ..." on the terminal, printed before it returns; the demo's stop prints nothing, and Serve is down
    r = subprocess.run([sys.executable, "-c", DRIVER], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines() == ["answer: hello", "controller: gone", "proxy: gone"], r.stdout + r.stderr[-3000:]
    assert "graceful_shutdown" not in r.stderr + r.stdout and "retries remaining" not in r.stderr + r.stdout
