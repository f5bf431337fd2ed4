"""One endpoint as a Ray Serve application: an ingress router and one deployment per model deployment.

``ModelServer`` holds one loaded model package and answers with dynamic request batching
(``@serve.batch``); a package that fails to load leaves the server alive but not ready. Images are decoded
in worker threads, off the replica's event loop.
``EndpointRouter`` is the ingress: it checks the key, picks a deployment by traffic weight (or the one
named by the ``azureml-model-deployment`` header), forwards, copies mirrored traffic (responses
discarded, at most as many copies unanswered as the mirror deployment handles at once: ``serving.mirror``),
and serves the health routes. Ray Serve has no weighted split between deployments, so the router is ours;
weights, mirror and key digests arrive through ``user_config``, so changing them reconfigures the running
router without dropping in-flight requests. ``user_config`` is shown by Ray's dashboard and Serve's REST
API, so it carries salted digests of the keys, never the keys (``serving.keys``).

Routes under the endpoint's prefix ``/<endpoint>``: ``POST /score`` (also ``POST /``), ``GET /health/live``
and ``GET /health/ready`` (no key; the status only: ``{"status": "ready"}`` or ``"not ready"`` with 503),
and ``GET /status`` (with the key): each deployment's readiness and its reason (which may hold package
paths and exception text), traffic, and the mirrors' counters.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from serving import keys
from serving.mirror import Mirror
from serving.probes import Liveness, ProbeState
from serving.schema import BadRequest, parse_request, read_body
from serving.specs import Batching
from trainers.data.images import ImageTooLarge
from trainers.errors import VisionsweepError

DEPLOYMENT_HEADER = "azureml-model-deployment"
logger = logging.getLogger("ray.serve")


@serve.deployment
class ModelServer:
    def __init__(self, package: str, inference_settings: dict[str, Any] | None = None, cpus: float = 1.0,
                 registry_uri: str | None = None, liveness: dict[str, Any] | None = None, runtime: str = "pytorch"):
        self.started = time.monotonic()  # the readiness probe's initial_delay counts from here (serving.probes)
        self.liveness = Liveness(**(liveness or {}))  # counts from here too
        self.liveness_timeout_s = float((liveness or {}).get("timeout", 2))
        self.package, self.error, self.predictor = package, None, None
        self.predicted = self.batches = 0
        import torch

        # Ray starts a replica with OMP_NUM_THREADS = its whole CPUs (1 for 1.8): use what the deployment asked for.
        torch.set_num_threads(max(1, round(cpus)))
        try:
            from serving.explain import Explainer
            from serving.onnx_runtime import make_predictor

            # the deployment's runtime (serving.onnx_runtime): PyTorch, or the package's ONNX graph under onnxruntime
            self.predictor = make_predictor(package, runtime, inference_settings or None, registry_uri,
                                            threads=max(1, round(cpus)))
            self.explainer = Explainer(self.predictor)
        except Exception as e:  # a broken package: stay alive, report not ready
            self.error = f"{type(e).__name__}: {e}"
        # Explanations run one at a time (``Explainer``); the ones waiting wait here, not in threads of the
        # default executor, which predictions and image decoding use.
        self._explain_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="explain")

    def reconfigure(self, config: dict[str, Any]) -> None:
        """The deployment's ``batching`` settings (its ``user_config``): Serve calls this after ``__init__``
        and again whenever they change, without restarting the replica."""
        b = Batching(**(config.get("batching") or {}))
        self._batched.set_max_batch_size(b.max_batch_size)
        self._batched.set_batch_wait_timeout_s(b.batch_wait_timeout_s)

    async def check_health(self) -> None:
        """Serve's replica health check, as the deployment's ``liveness_probe`` (§9.3): the replica is alive when
        its worker threads, which decode images and run the model, still take work within ``timeout`` seconds.
        A package that failed to load stays alive (and not ready: the readiness probe's business), so that it
        is not restarted over and over."""
        try:
            await asyncio.wait_for(asyncio.to_thread(time.monotonic), timeout=self.liveness_timeout_s)
            ok = True
        except asyncio.TimeoutError:
            ok = False
        if not self.liveness.record(ok):
            raise RuntimeError(f"liveness probe: {self.liveness.failures} failed checks in a row "
                               f"(worker threads took no work within {self.liveness_timeout_s:g} s)")

    def ready(self) -> dict[str, Any]:
        return {"ready": self.error is None, "error": self.error, "uptime_s": time.monotonic() - self.started}

    def stats(self) -> dict[str, int]:
        """Images predicted and batches run by this replica (mirror checks, batching monitoring)."""
        return {"predicted": self.predicted, "batches": self.batches}

    @serve.batch  # sizes set by reconfigure()
    async def _batched(self, images: list) -> list[dict[str, Any]]:
        self.predicted += len(images)
        self.batches += 1
        return await asyncio.to_thread(self.predictor.predict_images, images)

    async def _decode(self, image: bytes) -> tuple[Any, dict[str, Any] | None]:
        """The image decoded in a worker thread -> ``(image, None)``, or ``(None, error answer)``. Decoding is
        CPU work (up to ``MAX_IMAGE_PIXELS`` pixels); on the event loop it would hold up the batcher and
        every other request of the replica."""
        from serving.predictor import BadImage, decode_image

        try:
            return await asyncio.to_thread(decode_image, image, "image"), None
        except ImageTooLarge as e:
            return None, {"error": str(e), "status": 413}
        except BadImage as e:
            return None, {"error": str(e), "status": 400}

    async def predict(self, image: bytes) -> dict[str, Any]:
        """One image -> its response object, or ``{"error", "status"}``."""
        if self.error:
            return {"error": f"deployment not ready: {self.error}", "status": 503}
        pil, error = await self._decode(image)
        return error or await self._batched(pil)

    async def explain(self, image: bytes, xai: dict[str, Any]) -> dict[str, Any]:
        if self.error:
            return {"error": f"deployment not ready: {self.error}", "status": 503}

        pil, error = await self._decode(image)
        if error:
            return error
        try:
            return await asyncio.get_running_loop().run_in_executor(self._explain_pool, self.explainer.explain,
                                                                    pil, xai)
        except VisionsweepError as e:  # an explanation this model cannot give
            return {"error": str(e), "status": 400}


def no_traffic_message(endpoint: str, deployments: list[str]) -> str:
    """The 503 of an endpoint whose traffic is all 0 % (every new deployment starts there): its deployments and
    the command that gives one of them traffic."""
    names = sorted(deployments)
    if not names:
        return (f"endpoint {endpoint} has no deployment: create one with `visionsweep deployment create -f "
                "deployment.yml`, then send it traffic with `visionsweep endpoint update`")
    return (f"no deployment of endpoint {endpoint} receives traffic (deployments: {', '.join(names)}; each at 0 %). "
            f"Send it traffic with `visionsweep endpoint update {endpoint} --traffic {names[0]}=100` (weights "
            "NAME=PERCENT, comma-separated, summing to at most 100), or name a deployment per request with the "
            f"{DEPLOYMENT_HEADER} header")


@serve.deployment
class EndpointRouter:
    def __init__(self, endpoint: str, servers: dict[str, Any], probes: dict[str, dict[str, Any]],
                 timeouts_s: dict[str, float], capacity: dict[str, int]):
        self.endpoint, self.servers = endpoint, servers
        self.timeouts_s = timeouts_s  # request_settings.request_timeout_ms per deployment, in seconds
        self.probes = {name: ProbeState(**p) for name, p in probes.items()}
        # a deployment mirrored to has at most as many copies unanswered as it handles at once
        self.mirrors = {name: Mirror(f"{endpoint}/{name}", capacity[name]) for name in servers}
        self.traffic: dict[str, int] = {}
        self.mirror: dict[str, int] = {}
        self.key_check: dict[str, Any] | None = None
        self.auth_mode = "key"
        self.rng = random.Random()

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.traffic = {k: int(v) for k, v in (config.get("traffic") or {}).items() if k in self.servers}
        self.mirror = {k: int(v) for k, v in (config.get("mirror") or {}).items() if k in self.servers}
        self.key_check = config.get("key_check")
        self.auth_mode = config.get("auth_mode", "key")

    # --- health ----------------------------------------------------------------------------------
    async def _is_ready(self, name: str) -> bool:
        probe = self.probes[name]
        if probe.due():
            was, t0 = (probe.ready, probe.reason), time.monotonic()
            try:
                state = await asyncio.wait_for(self.servers[name].ready.remote(), timeout=probe.timeout)
                probe.record(bool(state["ready"]), time.monotonic() - t0, state.get("error") or "",
                             uptime_s=state.get("uptime_s"))
            except Exception as e:  # timeout or replica trouble count as failed checks
                probe.record(False, time.monotonic() - t0, type(e).__name__)
            if (probe.ready, probe.reason) != was:  # the reason goes to the log (and GET /status), not to probes
                logger.log(logging.INFO if probe.ready else logging.WARNING, "endpoint %s: deployment %s is %s (%s)",
                           self.endpoint, name, "ready" if probe.ready else "not ready", probe.reason)
        return probe.ready

    async def readiness(self, only: list[str] | None = None) -> dict[str, Any]:
        """Each deployment's readiness (of those in ``only``, default all), its probes checked concurrently where
        due. ``only`` lets ``deployment show`` leave out deployments that Serve says run no replica: a check of
        one of those waits its whole probe ``timeout`` for a replica that is not there."""
        names = [n for n in self.servers if only is None or n in only]
        ready = await asyncio.gather(*(self._is_ready(n) for n in names))
        states = {n: {"ready": r, "reason": self.probes[n].reason} for n, r in zip(names, ready)}
        serving = [n for n, w in self.traffic.items() if w > 0 and n in states]
        return {"ready": any(states[n]["ready"] for n in serving), "deployments": states, "traffic": self.traffic}

    async def status(self, only: list[str] | None = None) -> dict[str, Any]:
        """Readiness with each deployment's reason, and the mirrors' counters (``GET /status``, with the key;
        ``?deployments=blue,green``: only those deployments' readiness)."""
        mirrors = {n: m.stats() for n, m in self.mirrors.items() if self.mirror.get(n) or m.copies}
        return {**await self.readiness(only), "mirror": mirrors}

    # --- requests --------------------------------------------------------------------------------
    def _authorised(self, request: Request) -> bool:
        if self.auth_mode == "none":
            return True
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        return keys.matches(token, self.key_check)

    async def _pick(self, request: Request) -> str:
        """The deployment for a request: the one named in the header, else a ready one by weight."""
        named = request.headers.get(DEPLOYMENT_HEADER)
        if named:
            if named not in self.servers:
                raise BadRequest(f"no deployment named {named!r} in endpoint {self.endpoint}", 404)
            if not await self._is_ready(named):
                raise BadRequest(f"deployment {named} is not ready ({self.probes[named].reason})", 503)
            return named
        live = [(n, w) for n, w in self.traffic.items() if w > 0]
        if not live:
            raise BadRequest(no_traffic_message(self.endpoint, list(self.servers)), 503)
        # A deployment that is not ready gets no traffic; its share goes to the ready ones.
        ready = [(n, w) for n, w in live if await self._is_ready(n)]
        if not ready:
            reasons = "; ".join(f"{n}: {self.probes[n].reason}" for n, _ in live)
            raise BadRequest(f"no deployment of endpoint {self.endpoint} is ready ({reasons})", 503)
        names, weights = zip(*ready)
        return self.rng.choices(names, weights=weights)[0]

    def _copy_to_mirrors(self, items) -> None:
        """Send copies (answers discarded); never waits, and drops copies a full mirror cannot take."""
        for name, pct in self.mirror.items():
            if pct > 0 and self.rng.random() * 100 < pct:
                handle = self.servers[name]
                for it in items:
                    self.mirrors[name].send(lambda image=it.image: handle.predict.remote(image))

    async def __call__(self, request: Request):
        path = request.url.path.rstrip("/")
        try:
            if request.method == "GET" and path.endswith("/health/live"):
                return JSONResponse({"status": "alive"})
            if request.method == "GET" and path.endswith("/health/ready"):
                ready = (await self.readiness())["ready"]
                return JSONResponse({"status": "ready" if ready else "not ready"}, 200 if ready else 503)
            details = request.method == "GET" and path.endswith("/status")
            if request.method != "POST" and not details:
                return JSONResponse({"error": "use POST /score, GET /health/live, GET /health/ready or "
                                              "GET /status (with the key)"}, 404)
            if not self._authorised(request):
                return JSONResponse({"error": "missing or invalid key (Authorization: Bearer <key>)"}, 401)
            if details:
                only = request.query_params.get("deployments")
                return JSONResponse(await self.status(None if only is None else [n for n in only.split(",") if n]))
            name = await self._pick(request)
            body = await read_body(request.stream(), request.headers.get("content-length"))
            items = parse_request(body, request.headers.get("content-type"))
            handle = self.servers[name]
            calls = [handle.explain.remote(it.image, it.xai.model_dump()) if it.xai else handle.predict.remote(it.image)
                     for it in items]
            timeout = self.timeouts_s[name]
            try:
                results = await asyncio.wait_for(asyncio.gather(*calls), timeout)
            except asyncio.TimeoutError:
                return JSONResponse({"error": f"deployment {name} did not answer within {timeout * 1000:.0f} ms "
                                              "(request_settings.request_timeout_ms)"}, 408,
                                    headers={DEPLOYMENT_HEADER: name})
            self._copy_to_mirrors(items)
            for i, r in enumerate(results):
                if "error" in r:
                    return JSONResponse({"error": f"input_data.data[{i}]: {r['error']}"}, r["status"],
                                        headers={DEPLOYMENT_HEADER: name})
            return JSONResponse(results, headers={DEPLOYMENT_HEADER: name})
        except BadRequest as e:
            return JSONResponse({"error": str(e)}, e.status)


def _version(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_app(endpoint: str, deployments: dict[str, dict[str, Any]], router_config: dict[str, Any]):
    """The Serve application of an endpoint from its stored state (see ``serving.endpoints``).

    Each deployment gets a version derived from what its replicas are built from (package, settings,
    resources; for the router, the deployments and probes it routes to). Serve's Python API would
    otherwise give every ``serve.run`` a random version and restart every replica, even when only the
    traffic weights (``user_config``) changed; with stable versions that change is a lightweight
    ``reconfigure`` of the running router, and unchanged model deployments keep their replicas.
    """
    servers, probes, timeouts, capacity = {}, {}, {}, {}
    for name, d in deployments.items():
        opts: dict[str, Any] = {"name": f"{endpoint}-{name}",
                                "ray_actor_options": {"num_cpus": d.get("cpus_per_instance", 1.0),
                                                      "num_gpus": d.get("num_gpus", 0.0)},
                                "health_check_period_s": d["liveness_probe"]["period"],
                                # our own check times out first (and counts it): ModelServer.check_health
                                "health_check_timeout_s": d["liveness_probe"]["timeout"] + 1,
                                # the router calls a replica once per image, and a request may carry several
                                "max_ongoing_requests":
                                    d["request_settings"]["max_concurrent_requests_per_instance"] * 4,
                                "user_config": {"batching": d["batching"]}}
        scale = d["scale_settings"]
        if scale["type"] == "target_utilization":
            opts["autoscaling_config"] = {"min_replicas": scale["min_instances"],
                                          "max_replicas": scale["max_instances"],
                                          "target_ongoing_requests": scale["target_ongoing_requests"]}
        else:
            opts["num_replicas"] = d["instance_count"]
        code = {"model": d["model"], "registry": d.get("model_registry_uri"), "settings": d.get("inference_settings"),
                "actor": opts["ray_actor_options"], "probe": d["liveness_probe"]}
        if d.get("runtime", "pytorch") != "pytorch":  # the default runtime's deployments keep the versions they had
            code.update(runtime=d["runtime"], graph=d.get("graph_stamp"))  # serving.onnx_runtime.graph_stamp
        servers[name] = ModelServer.options(**opts, version=_version(code), _internal=True).bind(
            d["model"], d.get("inference_settings") or {}, d.get("cpus_per_instance", 1.0), d.get("model_registry_uri"),
            d["liveness_probe"], d.get("runtime", "pytorch"))
        probes[name] = dict(d["readiness_probe"])
        timeouts[name] = d["request_settings"]["request_timeout_ms"] / 1000.0
        instances = scale["max_instances"] if scale["type"] == "target_utilization" else d["instance_count"]
        capacity[name] = d["request_settings"]["max_concurrent_requests_per_instance"] * instances
    router_version = _version({"deployments": sorted(deployments), "probes": probes,
                               "servers": {n: _version(d) for n, d in deployments.items()}})
    return EndpointRouter.options(name=f"{endpoint}-router", user_config=router_config, version=router_version,
                                  _internal=True, ray_actor_options={"num_cpus": 0.1}).bind(endpoint, servers, probes,
                                                                                               timeouts, capacity)

