"""A real two-node Ray cluster on one machine, with token auth, that stops only what it started.

``ray start --head`` plus one ``ray start --address=...`` worker node, each with its own ports, temp dir,
CPU count and memory caps, both under ``RAY_AUTH_MODE=token`` with a token file generated into the cluster
directory (``RAY_AUTH_TOKEN_PATH``). Each node's ``ray start`` runs in a session of its own, so its daemons
and the workers they spawn share that session id; they also carry a marker in their environment
(``VISIONSWEEP_LOCAL_CLUSTER=<id>:<node>``). :meth:`LocalCluster.stop` ends exactly the processes found that
way (plus their descendants, e.g. job drivers) and waits for them to exit; it never runs ``ray stop``, which
ends every Ray on the machine.

CLI::

    python -m cluster.local start  --dir /tmp/vs-cluster [--head-cpus 1 --worker-cpus 1]
    eval "$(python -m cluster.local env --dir /tmp/vs-cluster)"   # RAY_ADDRESS, RAY_AUTH_MODE, token path ...
    python -m cluster.local status --dir /tmp/vs-cluster
    python -m cluster.local stop-worker --dir /tmp/vs-cluster     # the second node leaves (fault tests)
    python -m cluster.local stop   --dir /tmp/vs-cluster

Python::

    with LocalCluster("/tmp/vs-cluster", head_cpus=1, worker_cpus=1) as c:
        subprocess.run(["ray", "job", "submit", "--address", c.dashboard_url, ...], env={**os.environ, **c.env()})
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

STATE_FILE = "cluster.json"
TOKEN_FILE = "auth_token"
MARKER_ENV = "VISIONSWEEP_LOCAL_CLUSTER"
HOST = "127.0.0.1"
# variables that must not leak from the caller into the nodes (they would point the nodes elsewhere)
_NODE_ENV_DROP = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE",
                  MARKER_ENV)
_WORKER_PORTS = 32           # per node: ports for Ray's worker processes (each core worker listens on one)
_PORTS_PER_NODE = 8 + _WORKER_PORTS


class ClusterError(RuntimeError):
    pass


def _ray_bin() -> str:
    """The ``ray`` CLI of this interpreter's environment (the venv), else the one on PATH."""
    cand = Path(sys.executable).parent / "ray"
    if cand.exists():
        return str(cand)
    found = shutil.which("ray")
    if not found:
        raise ClusterError("the `ray` command was not found (install ray[default] in this environment)")
    return found


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _find_port_block(n: int, tries: int = 50) -> int:
    """A random base port such that base .. base+n-1 are all free (bounded tries)."""
    rng = random.Random()
    for _ in range(tries):
        base = rng.randrange(20000, 30000 - n)
        if all(_port_free(p) for p in range(base, base + n)):
            return base
    raise ClusterError(f"no block of {n} free ports found in {tries} tries")


# ---------------------------------------------------------------------------------------------------- processes

def _proc_stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, session id, start time in clock ticks since boot) of a live process, None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces: split after its closing parenthesis
    fields = stat[stat.rfind(")") + 2:].split()
    if not fields or fields[0] in ("Z", "X"):      # exited already
        return None
    return int(fields[1]), int(fields[3]), int(fields[19])


def _proc_start_time(pid: int) -> int | None:
    st = _proc_stat(pid)
    return None if st is None else st[2]


def _find_procs(sids: set[int], marker: str) -> dict[int, int]:
    """{pid: start_time} of a node's processes: those in one of its sessions (``ray start`` runs in a session
    of its own), those whose environment carries its marker, and every descendant of these (a job driver may
    open a session of its own). The start time guards against PID reuse."""
    needle = f"{MARKER_ENV}={marker}".encode()
    table: dict[int, tuple[int, int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _proc_stat(int(entry))
            if st is not None:
                table[int(entry)] = st
    me = os.getpid()
    ours: set[int] = set()
    for pid, (_, sid, _) in table.items():
        if pid == me:
            continue
        if sid in sids:
            ours.add(pid)
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        # (processes that rewrite their title, as Ray's workers do, may have overwritten this: hence sid/tree)
        if any(item.startswith(needle) for item in env.split(b"\0")):
            ours.add(pid)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(ours)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in ours and c != me:
                ours.add(c)
                todo.append(c)
    return {pid: table[pid][2] for pid in ours}


def _live_sids(rec) -> set[int]:
    """The recorded session id ([ray start's pid, its start time]) if it can still be ours.

    Linux hands out no pid still in use as a session id, so the number can only be reused once every process
    of our session is gone; a reuser would be a new session leader with that pid and another start time."""
    if not rec:
        return set()
    sid, started = rec
    now = _proc_start_time(sid)
    return set() if now is not None and now != started else {sid}


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int, start_time: int) -> bool:
    return _proc_start_time(pid) == start_time


def _kill_and_wait(procs: dict[int, int], timeout: float = 20.0, force: bool = False) -> list[int]:
    """SIGTERM (SIGKILL with force) the given {pid: start_time}; SIGKILL what is left after timeout.

    Returns the pids still alive at the end (normally none)."""
    def send(sig, pids):
        for pid in pids:
            if _alive(pid, procs[pid]):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass

    send(signal.SIGKILL if force else signal.SIGTERM, procs)
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        left = [p for p in procs if _alive(p, procs[p])]
        if not left:
            return []
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    left = [p for p in procs if _alive(p, procs[p])]
    send(signal.SIGKILL, left)
    for _ in range(50):
        left = [p for p in procs if _alive(p, procs[p])]
        if not left:
            return []
        time.sleep(0.1)
    return left


# ---------------------------------------------------------------------------------------------------- cluster

class LocalCluster:
    """A two-node Ray cluster on this machine (head + one worker node), token auth on.

    ``dir`` holds ``cluster.json`` (address, dashboard URL, client env, our PIDs), the token file and the
    ``ray start`` logs; Ray's own temp dirs live under a short ``/tmp/vs-XXXX`` (socket paths are
    length-limited). Trial drivers get ``head_cpus`` / ``worker_cpus`` CPUs per node; ``memory`` and
    ``object_store_memory`` cap each node (bytes; otherwise each node claims the machine's RAM).
    ``node_timeout_s`` shortens how long the head takes to declare a lost node dead (see :meth:`stop_worker`);
    ``extra_env`` adds variables to both nodes' environment (e.g. ``RAY_<config>`` settings).
    """

    def __init__(self, dir: str | os.PathLike, head_cpus: int = 1, worker_cpus: int = 1, *,
                 head_gpus: int = 0, worker_gpus: int = 0,
                 memory: int = 2 * 1024**3, object_store_memory: int = 256 * 1024**2,
                 base_port: int | None = None, start_timeout: float = 120.0, node_timeout_s: int | None = None,
                 extra_env: dict[str, str] | None = None, keep_temp: bool = False):
        self.dir = Path(dir).resolve()
        self.head_cpus, self.worker_cpus = head_cpus, worker_cpus
        self.head_gpus, self.worker_gpus = head_gpus, worker_gpus
        self.memory, self.object_store_memory = memory, object_store_memory
        self.base_port = base_port
        self.start_timeout = start_timeout
        self.extra_env = {}
        if node_timeout_s is not None:
            # the GCS declares a silent node dead after about this long (Ray's default: ~15-30 s); for fault tests
            self.extra_env.update({"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                                   "RAY_health_check_failure_threshold": str(max(2, int(node_timeout_s)))})
        self.extra_env.update(extra_env or {})
        self.keep_temp = keep_temp
        self.state: dict | None = None

    # -------------------------------------------------------------------------------------------- state
    @property
    def state_path(self) -> Path:
        return self.dir / STATE_FILE

    @property
    def token_path(self) -> Path:
        return self.dir / TOKEN_FILE

    @classmethod
    def from_dir(cls, dir: str | os.PathLike) -> "LocalCluster":
        """The cluster recorded in ``dir/cluster.json`` (started by another process)."""
        c = cls(dir)
        if not c.state_path.exists():
            raise ClusterError(f"no cluster recorded in {c.dir} ({STATE_FILE} missing)")
        c.state = json.loads(c.state_path.read_text())
        return c

    def _require(self) -> dict:
        if self.state is None:
            raise ClusterError("the cluster is not started")
        return self.state

    @property
    def address(self) -> str:
        """The GCS address (``127.0.0.1:PORT``): for ``ray.init(address=...)``, ``ray status``."""
        return self._require()["address"]

    @property
    def dashboard_url(self) -> str:
        """The dashboard / Jobs API (``http://127.0.0.1:PORT``): for ``ray job submit --address``."""
        return self._require()["dashboard_url"]

    @property
    def token(self) -> str:
        return self.token_path.read_text().strip()

    def env(self) -> dict[str, str]:
        """Environment variables a client needs (RAY_ADDRESS, RAY_API_SERVER_ADDRESS, RAY_AUTH_MODE, token path)."""
        return dict(self._require()["env"])

    def pids(self, node: str | None = None) -> dict[int, int]:
        """{pid: start_time} of our live processes (``node``: "head", "worker" or None for both)."""
        st = self._require()
        found: dict[int, int] = {}
        for n in ("head", "worker"):
            if node in (None, n):
                found.update(_find_procs(_live_sids(st["sids"].get(n)), f"{st['id']}:{n}"))
                found.update({int(p): t for p, t in st["pids"][n].items() if _alive(int(p), t)})
        return found

    def _save(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2) + "\n")
        tmp.replace(self.state_path)

    # -------------------------------------------------------------------------------------------- start
    def _node_env(self, node: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _NODE_ENV_DROP}
        venv_bin = str(Path(sys.executable).parent)
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")   # `visionsweep` resolves in job entrypoints
        env.update({
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            "RAY_USAGE_STATS_ENABLED": "0",
            MARKER_ENV: f"{self.state['id']}:{node}",
        })
        env.update(self.extra_env)
        return env

    def _ray_start(self, node: str, args: list[str]) -> None:
        log = self.dir / f"ray-start-{node}.log"
        cmd = [_ray_bin(), "start", *args]
        with open(log, "wb") as out:
            out.write(("$ " + shlex.join(cmd) + "\n").encode())
            out.flush()
            # a session of its own: the node's daemons share its id (how stop() finds them), and they leave
            # the caller's process group (no Ctrl-C / SIGHUP from the caller's terminal)
            proc = subprocess.Popen(cmd, env=self._node_env(node), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            self.state["sids"][node] = [proc.pid, _proc_start_time(proc.pid)]
            self._save()
            try:
                rc = proc.wait(timeout=self.start_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
        if rc != 0:
            tail = log.read_text(errors="replace")[-3000:]
            raise ClusterError(f"`ray start` ({node}) failed with exit code {rc}; {log}:\n{tail}")
        self.state["pids"][node] = {str(p): t for p, t in self.pids(node).items()}
        self._save()

    def start(self) -> "LocalCluster":
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.state_path.exists():
            old = LocalCluster.from_dir(self.dir)
            if old.pids():
                raise ClusterError(f"a cluster is already running from {self.dir}: stop it first")
        # the token: generated here, owner-only, next to cluster.json (never in ~/.ray, which other clusters use)
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        temp_root = Path(tempfile.mkdtemp(prefix="vs-", dir="/tmp"))
        base = self.base_port or _find_port_block(2 * _PORTS_PER_NODE)
        head_ports = _node_ports(base, head=True)
        worker_ports = _node_ports(base + _PORTS_PER_NODE, head=False)
        address = f"{HOST}:{head_ports['port']}"
        dashboard_url = f"http://{HOST}:{head_ports['dashboard-port']}"
        self.state = {
            "id": f"{secrets.token_hex(4)}-{self.dir.name}",
            "dir": str(self.dir),
            "temp_dir": str(temp_root),
            "address": address,
            "dashboard_url": dashboard_url,
            "env": {
                "RAY_ADDRESS": address,                   # drivers (ray.init, visionsweep run), ray status
                "RAY_API_SERVER_ADDRESS": dashboard_url,  # ray job submit/status/logs (read before RAY_ADDRESS)
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            },
            "ports": {"head": head_ports, "worker": worker_ports},
            "resources": {"head": {"CPU": self.head_cpus, "GPU": self.head_gpus},
                          "worker": {"CPU": self.worker_cpus, "GPU": self.worker_gpus}},
            "sids": {"head": None, "worker": None},   # each node's session: [its ray start pid, start time]
            "pids": {"head": {}, "worker": {}},       # {pid: start time} found after each ray start
            "started": time.time(),
        }
        self._save()
        try:
            common = [f"--node-ip-address={HOST}", f"--memory={self.memory}",
                      f"--object-store-memory={self.object_store_memory}", "--disable-usage-stats"]
            self._ray_start("head", [
                "--head", f"--port={head_ports['port']}", f"--temp-dir={temp_root / 'h'}",
                f"--num-cpus={self.head_cpus}", f"--num-gpus={self.head_gpus}",
                "--include-dashboard=true", f"--dashboard-host={HOST}",
                f"--dashboard-port={head_ports['dashboard-port']}",
                f"--ray-client-server-port={head_ports['ray-client-server-port']}",
                *_port_args(head_ports), *common])
            self._wait_for(1, "the head node")
            self._ray_start("worker", [
                f"--address={address}", f"--temp-dir={temp_root / 'w'}",
                f"--num-cpus={self.worker_cpus}", f"--num-gpus={self.worker_gpus}",
                *_port_args(worker_ports), *common])
            self._wait_for(2, "both nodes")
        except BaseException:
            self.stop()
            raise
        return self

    # -------------------------------------------------------------------------------------------- queries
    def api(self, path: str, token: str | None = None, timeout: float = 5.0):
        """GET ``dashboard_url + path`` with the cluster's token (or ``token``; "" sends none); parsed JSON.

        E.g. ``api("/api/jobs/<submission_id>")["status"]`` (the Jobs REST API). HTTP errors raise
        ``urllib.error.HTTPError`` (401 without a token, 403 with a wrong one)."""
        req = urllib.request.Request(self.dashboard_url + path)
        token = self.token if token is None else token
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def nodes(self) -> list[dict]:
        """Every node the cluster knows (state API through the dashboard): node_id, state, resources ..."""
        data = self.api("/api/v0/nodes?limit=100&detail=true")
        return data["data"]["result"]["result"]

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.nodes() if n.get("state") == "ALIVE"]

    def _wait_for(self, n_alive: int, what: str) -> None:
        """Poll the dashboard until n_alive nodes are ALIVE (bounded: about start_timeout seconds)."""
        deadline = time.monotonic() + self.start_timeout
        delay, last = 0.2, None
        while time.monotonic() < deadline:
            try:
                if len(self.alive_nodes()) >= n_alive:
                    return
            except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
                last = e
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)
        raise ClusterError(f"{what} not up after {self.start_timeout:.0f} s (last error: {last!r}); "
                           f"logs in {self.state['temp_dir']}")

    def wait_for_nodes(self, n_alive: int, timeout: float = 60.0) -> list[dict]:
        """Poll until exactly n_alive nodes are ALIVE (e.g. 1 after stop_worker); returns them."""
        deadline = time.monotonic() + timeout
        delay = 0.2
        while True:
            alive = self.alive_nodes()
            if len(alive) == n_alive or time.monotonic() > deadline:
                if len(alive) != n_alive:
                    raise ClusterError(f"{len(alive)} nodes alive after {timeout:.0f} s, expected {n_alive}")
                return alive
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def status(self) -> dict:
        st = self._require()
        head, worker = self.pids("head"), self.pids("worker")
        try:
            nodes = [{"node_ip": n.get("node_ip"), "state": n.get("state"), "is_head": n.get("is_head_node"),
                      "resources": n.get("resources_total")} for n in self.nodes()]
        except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
            nodes = f"dashboard not answering: {e}"
        return {"address": st["address"], "dashboard_url": st["dashboard_url"],
                "head_processes": len(head), "worker_processes": len(worker), "nodes": nodes}

    # -------------------------------------------------------------------------------------------- stop
    def stop_worker(self, force: bool = True, wait_dead: bool = False, timeout: float = 60.0) -> None:
        """End the worker node only (SIGKILL by default: the node leaves abruptly, as a lost VM would).

        With wait_dead, also wait until the head reports a single alive node."""
        st = self._require()
        left = _kill_and_wait(self.pids("worker"), force=force)
        if left:
            raise ClusterError(f"worker-node processes did not exit: {left}")
        st["pids"]["worker"] = {}
        self._save()
        if wait_dead:
            self.wait_for_nodes(1, timeout=timeout)

    def stop(self) -> None:
        """End every process of this cluster (and nothing else) and wait until they are gone."""
        if self.state is None:
            if not self.state_path.exists():
                return
            self.state = json.loads(self.state_path.read_text())
        st = self.state
        # worker node first (it would otherwise try to reconnect to the head), then the head without its GCS,
        # then the GCS. (SIGTERM to the whole head at once took ~20 s here: raylet and GCS wait on each other;
        # in this order it takes ~1 s.)
        left = _kill_and_wait(self.pids("worker"))
        head = self.pids("head")
        gcs = {p: t for p, t in head.items() if _comm(p) == "gcs_server"}
        left += _kill_and_wait({p: t for p, t in head.items() if p not in gcs})
        left += _kill_and_wait(gcs)
        left += _kill_and_wait(self.pids())     # anything spawned meanwhile
        if left:
            raise ClusterError(f"processes did not exit: {left}")
        st["pids"] = {"head": {}, "worker": {}}
        st["stopped"] = time.time()
        self._save()
        if not self.keep_temp and st.get("temp_dir", "").startswith("/tmp/vs-"):
            shutil.rmtree(st["temp_dir"], ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _node_ports(base: int, head: bool) -> dict[str, int]:
    names = ["node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port"]
    if head:
        names += ["port", "dashboard-port"]
    ports = {name: base + i for i, name in enumerate(names)}
    if head:
        ports["ray-client-server-port"] = base + 8 + _WORKER_PORTS - 1    # the block's last port, outside the range
    ports["min-worker-port"] = base + 8
    ports["max-worker-port"] = base + 8 + _WORKER_PORTS - (2 if head else 1)
    return ports


def _port_args(ports: dict[str, int]) -> list[str]:
    skip = {"port", "dashboard-port", "ray-client-server-port"}
    return [f"--{k}={v}" for k, v in ports.items() if k not in skip]


# ---------------------------------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.local", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, help_ in [("start", "start the head and one worker node"), ("stop", "stop both nodes"),
                        ("status", "print address, dashboard and nodes"),
                        ("env", "print `export` lines for a client shell (eval them)"),
                        ("stop-worker", "end the worker node only (a node leaves)")]:
        s = sub.add_parser(name, help=help_)
        s.add_argument("--dir", required=True, help="cluster directory (cluster.json, token, logs)")
        if name == "start":
            s.add_argument("--head-cpus", type=int, default=1)
            s.add_argument("--worker-cpus", type=int, default=1)
            s.add_argument("--head-gpus", type=int, default=0)
            s.add_argument("--worker-gpus", type=int, default=0)
            s.add_argument("--memory", type=int, default=2 * 1024**3, help="bytes per node for tasks")
            s.add_argument("--object-store-memory", type=int, default=256 * 1024**2, help="bytes per node")
            s.add_argument("--base-port", type=int, default=None)
            s.add_argument("--node-timeout", type=int, default=None,
                           help="seconds until the head declares a lost node dead (default: Ray's, ~15-30 s)")
    a = p.parse_args(argv)
    try:
        if a.cmd == "start":
            c = LocalCluster(a.dir, a.head_cpus, a.worker_cpus, head_gpus=a.head_gpus, worker_gpus=a.worker_gpus,
                             memory=a.memory, object_store_memory=a.object_store_memory, base_port=a.base_port,
                             node_timeout_s=a.node_timeout)
            c.start()
            print(f"Ray cluster up: 2 nodes, GCS {c.address}, dashboard {c.dashboard_url}", file=sys.stderr)
            print(f"client environment: eval \"$(python -m cluster.local env --dir {shlex.quote(str(c.dir))})\"",
                  file=sys.stderr)
            return 0
        c = LocalCluster.from_dir(a.dir)
        if a.cmd == "env":
            for k, v in c.env().items():
                print(f"export {k}={shlex.quote(v)}")
        elif a.cmd == "status":
            s = c.status()
            print(json.dumps(s, indent=2))
            return 0 if s["head_processes"] else 1
        elif a.cmd == "stop-worker":
            c.stop_worker(wait_dead=True)
        elif a.cmd == "stop":
            c.stop()
            print("stopped", file=sys.stderr)
        return 0
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
