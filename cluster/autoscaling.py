"""A Ray cluster YAML's node types, launched and terminated on this machine by Ray's own autoscaler.

What a cloud cluster does with ``ray up cluster/aws-gpu.yaml`` (the head starts, the autoscaler adds worker nodes of
the types the pending work asks for and removes them after ``idle_timeout_minutes``) run with Ray's fake multi-node
provider instead of a cloud: the same autoscaler (the v1 monitor), the same node-type format (``available_node_types``
with ``resources``, ``min_workers``, ``max_workers``; ``head_node_type``; ``max_workers``, ``upscaling_speed``,
``idle_timeout_minutes``), and each "instance" a real raylet started on this machine. GPUs are declared resources
only: a node type's ``GPU`` count is what Ray schedules on, and there is no CUDA behind it (``RAY_FAKE_CLUSTER`` is
set on every process of such a cluster; ``trainers.launch`` trains on the CPU there).

Why hand-written: Ray ships the provider but not a usable launcher for it in 2.60 (``ray.cluster_utils
.AutoscalingCluster`` reads an example file the wheel lacks and runs a global ``ray stop``). The cloud-only keys of
the YAML (``provider``, ``node_config``, ``docker``, ``auth``, setup commands, file mounts) are left out; the head
node type is renamed to the provider's fixed ``ray.head.default``. A node type's ``labels`` (``ray.io/market-type:
spot``, ``cluster.capacity``) reach its nodes as the cluster launcher passes them: the provider starts each raylet
with them, and the head gets its own through ``ray start --labels``.

Processes are found and stopped as ``cluster.local`` does (a session of their own plus the marker
``VISIONSWEEP_LOCAL_CLUSTER`` in their environment, which the autoscaler's nodes inherit); never ``ray stop``.

    with AutoscalingLocalCluster("/tmp/vs-as", "tests/fixtures/cluster/autoscaling.yaml") as c:
        os.environ.update(c.env())          # RAY_ADDRESS and token auth, then run a job against it
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from cluster.connect import CLUSTER_CONFIG_ENV
from cluster.local import (
    HOST,
    MARKER_ENV,
    ClusterError,
    _find_port_block,
    _find_procs,
    _kill_and_wait,
    _proc_start_time,
    _ray_bin,
)

HEAD_TYPE = "ray.head.default"  # the fake provider's fixed name for the head's node type
TOKEN_FILE = "auth_token"
#: each fake node's object store (bytes) unless its type says otherwise: nodes share this machine's memory
NODE_OBJECT_STORE = 100 * 2**20
#: what the v1 monitor needs and a cluster YAML may leave out (it reads the file as is, no defaults filled in)
_EMPTY = {"auth": {}, "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
          "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
          "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
          "rsync_exclude": [], "rsync_filter": []}
_NODE_ENV_DROP = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE",
                  MARKER_ENV)


def autoscaler_config(cluster_yaml: str | os.PathLike | dict[str, Any], gcs_address: str,
                      idle_timeout_minutes: float | None = None) -> dict[str, Any]:
    """The fake provider's autoscaling config for a cluster launcher YAML (a path or its parsed dict): its node
    types, their resources and worker counts, the head's type, and the scaling settings. Errors name the key."""
    cfg = cluster_yaml if isinstance(cluster_yaml, dict) else yaml.safe_load(Path(cluster_yaml).read_text())
    where = "the cluster config" if isinstance(cluster_yaml, dict) else str(cluster_yaml)
    types = cfg.get("available_node_types")
    head = cfg.get("head_node_type")
    if not isinstance(types, dict) or not types:
        raise ClusterError(f"{where}: available_node_types: expected a mapping of node types, but got {types!r}")
    if head not in types:
        raise ClusterError(f"{where}: head_node_type: expected one of {', '.join(types)}, but got {head!r}")
    out_types: dict[str, Any] = {}
    for name, t in types.items():
        res = dict((t or {}).get("resources") or {})
        if not res:
            raise ClusterError(f"{where}: available_node_types.{name}.resources: expected the node's resources "
                               "(e.g. {CPU: 4, GPU: 1}): the autoscaler launches a type by what it offers")
        labels = dict((t or {}).get("labels") or {})  # e.g. ray.io/market-type: spot (cluster.capacity)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise ClusterError(f"{where}: available_node_types.{name}.labels: expected string keys and values "
                               f"(e.g. {{ray.io/market-type: spot}}), but got {labels!r}")
        if name == head:
            out_types[HEAD_TYPE] = {"resources": res, "node_config": {}, "max_workers": 0,
                                    **({"labels": labels} if labels else {})}
            continue
        res.setdefault("object_store_memory", NODE_OBJECT_STORE)
        out_types[name] = {"resources": res, "node_config": {}, "min_workers": int(t.get("min_workers", 0)),
                           "max_workers": int(t.get("max_workers", cfg.get("max_workers", 1))),
                           **({"labels": labels} if labels else {})}
    return {
        "cluster_name": cfg.get("cluster_name", "visionsweep-local"),
        "max_workers": int(cfg.get("max_workers", sum(t.get("max_workers", 0) for t in out_types.values()))),
        "upscaling_speed": float(cfg.get("upscaling_speed", 1.0)),
        "idle_timeout_minutes": float(idle_timeout_minutes if idle_timeout_minutes is not None
                                      else cfg.get("idle_timeout_minutes", 5)),
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address,
                     # one node per launch call: with several at once the fake provider over-launches a type
                     "launch_multiple": False},
        "available_node_types": out_types,
        "head_node_type": HEAD_TYPE,
        **_EMPTY,
    }


class AutoscalingLocalCluster:
    """The head of a cluster YAML on this machine with Ray's autoscaler running its worker node types (see the
    module docstring). ``dir`` holds the token, the autoscaling config and the head's log; Ray's temp dir is a
    short ``/tmp/vsa-XXXX`` (socket paths are length-limited). ``idle_timeout_minutes`` overrides the YAML's (a
    test's 0.1: six seconds); ``update_interval_s`` is how often the autoscaler looks at the demand."""

    def __init__(self, dir: str | os.PathLike, cluster_yaml: str | os.PathLike | dict[str, Any], *,
                 idle_timeout_minutes: float | None = None, update_interval_s: float = 1.0,
                 start_timeout: float = 120.0, extra_env: dict[str, str] | None = None):
        self.dir = Path(dir)
        self.cluster_yaml = cluster_yaml
        self.idle_timeout_minutes = idle_timeout_minutes
        self.update_interval_s = update_interval_s
        self.start_timeout = start_timeout
        self.extra_env = dict(extra_env or {})  # added to every node's environment (e.g. RAY_<config> settings)
        self.marker = f"as-{secrets.token_hex(4)}"
        self.proc: subprocess.Popen | None = None
        self.sid: tuple[int, int | None] | None = None
        self.temp: Path | None = None
        self.port: int | None = None

    @property
    def address(self) -> str:
        if self.port is None:
            raise ClusterError("the cluster is not started")
        return f"{HOST}:{self.port}"

    @property
    def token_path(self) -> Path:
        return self.dir / TOKEN_FILE

    def env(self) -> dict[str, str]:
        """What a client (a driver, ``visionsweep run``) needs to join: the address, token auth, and where the
        autoscaler's node types are (what ``~/ray_bootstrap_config.yaml`` is on a cluster launcher's head)."""
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path),
                CLUSTER_CONFIG_ENV: str(self.config_path)}

    @property
    def config_path(self) -> Path:
        return self.dir / "autoscaler.json"

    def start(self) -> "AutoscalingLocalCluster":
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        self.port = _find_port_block(1)
        config = autoscaler_config(self.cluster_yaml, self.address, self.idle_timeout_minutes)
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")
        head_type = config["available_node_types"][HEAD_TYPE]
        head = head_type["resources"]
        labels = ",".join(f"{k}={v}" for k, v in head_type.get("labels", {}).items())
        custom = {k: v for k, v in head.items() if k not in ("CPU", "GPU", "memory", "object_store_memory")}
        self.temp = Path(tempfile.mkdtemp(prefix="vsa-", dir="/tmp"))
        env = {k: v for k, v in os.environ.items() if k not in _NODE_ENV_DROP}
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": f"{self.update_interval_s:g}",
                    "RAY_enable_autoscaler_v2": "0", "RAY_USAGE_STATS_ENABLED": "0", MARKER_ENV: self.marker,
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path), **self.extra_env})
        cmd = [_ray_bin(), "start", "--head", "--block", f"--port={self.port}", f"--node-ip-address={HOST}",
               f"--temp-dir={self.temp}", f"--autoscaling-config={self.config_path}",
               f"--num-cpus={head.get('CPU', 0):g}", f"--num-gpus={head.get('GPU', 0):g}",
               f"--object-store-memory={int(head.get('object_store_memory', NODE_OBJECT_STORE))}",
               "--include-dashboard=false", "--disable-usage-stats",
               *([f"--resources={json.dumps(custom)}"] if custom else []), *([f"--labels={labels}"] if labels else [])]
        log = self.dir / "ray-start-head.log"
        out = open(log, "wb")
        out.write(("$ " + shlex.join(cmd) + "\n").encode())
        out.flush()
        # a session of its own: the head's daemons share its id; the autoscaler's nodes carry the marker
        self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        out.close()
        self.sid = (self.proc.pid, _proc_start_time(self.proc.pid))
        deadline = time.monotonic() + self.start_timeout
        while "Ray runtime started" not in log.read_text(errors="replace"):  # `--block` says so once up
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                self.stop()
                raise ClusterError(f"`ray start --head` with the autoscaler did not come up; {log}:\n{tail}")
            time.sleep(0.2)
        return self

    def pids(self) -> dict[int, int]:
        """{pid: start time} of every process of this cluster: the head's session, the autoscaler's nodes."""
        if self.sid is None:
            return {}
        sid, started = self.sid
        live = _proc_start_time(sid)
        return _find_procs({sid} if live is None or live == started else set(), self.marker)

    def node_pids(self, node_id: str) -> dict[int, int]:
        """{pid: start time} of one autoscaler-launched node's processes (its raylet and what it started): what a
        cloud ends when it takes the instance."""
        from cluster.local import _proc_stat

        needle = f"RAY_OVERRIDE_NODE_ID_FOR_TESTING={node_id}".encode()
        ours = self.pids()
        found = {}
        for pid, started in ours.items():
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if needle in env:
                found[pid] = started
        children: dict[int, list[int]] = {}
        for pid in ours:
            st = _proc_stat(pid)
            if st:
                children.setdefault(st[0], []).append(pid)
        todo = list(found)
        while todo:
            for c in children.get(todo.pop(), []):
                if c not in found:
                    found[c] = ours[c]
                    todo.append(c)
        return found

    def kill_node(self, node_id: str) -> None:
        """End one autoscaler-launched node at once (SIGKILL), as a cloud takes a preempted instance."""
        left = _kill_and_wait(self.node_pids(node_id), timeout=10.0, force=True)
        if left:
            raise ClusterError(f"processes of node {node_id} outlived SIGKILL: {left}")

    def stop(self) -> None:
        """End this cluster's processes (SIGKILL: a raylet given SIGTERM outlives its GCS for seconds) and remove
        Ray's temp dir. Drivers connected to it must ``ray.shutdown()`` first."""
        left = _kill_and_wait(self.pids(), timeout=10.0, force=True)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if left:
            raise ClusterError(f"processes of the autoscaling cluster outlived SIGKILL: {left}")
        if self.temp is not None:
            shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self) -> "AutoscalingLocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
