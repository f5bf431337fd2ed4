"""A stand-in for the clouds' instance metadata endpoints (real HTTP on 127.0.0.1), for ``cluster.notice``: AWS's
IMDSv2 (a token first, then ``spot/instance-action``), Azure's instance name and Scheduled Events, Google Cloud's
``instance/preempted``. ``preempt()`` gives the notice, as the cloud does before it takes the VM."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "imds-token"
VM = "vs-spot-1"


class MetadataServer:
    def __init__(self, lead_s: float = 120.0):
        self.lead_s = lead_s  # how long before the VM is taken the notice comes
        self.taken_at: float | None = None
        self.other_events: list[dict] = []  # Scheduled Events of other VMs (Azure lists them too)
        self.reads = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: str = "", kind: str = "text/plain") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self):
                if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    return self._send(200, TOKEN)
                self._send(400)

            def do_GET(self):
                server.reads += 1
                taken = server.taken_at
                if self.path == "/latest/meta-data/spot/instance-action":
                    if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
                        return self._send(401)
                    if taken is None:
                        return self._send(404, "Not Found")
                    when = datetime.fromtimestamp(taken, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                    return self._send(200, json.dumps({"action": "terminate", "time": when}), "application/json")
                if self.path.startswith("/metadata/"):
                    if self.headers.get("Metadata") != "true":
                        return self._send(400)
                    if self.path.startswith("/metadata/instance/compute/name"):
                        return self._send(200, VM)
                    events = list(server.other_events)
                    if taken is not None:
                        events.append({"EventId": "E1", "EventType": "Preempt", "ResourceType": "VirtualMachine",
                                       "Resources": [VM], "EventStatus": "Scheduled",
                                       "NotBefore": format_datetime(datetime.fromtimestamp(taken, timezone.utc),
                                                                    usegmt=True)})
                    return self._send(200, json.dumps({"DocumentIncarnation": len(events), "Events": events}),
                                      "application/json")
                if self.path == "/computeMetadata/v1/instance/preempted":
                    if self.headers.get("Metadata-Flavor") != "Google":
                        return self._send(403)
                    return self._send(200, "TRUE" if taken is not None else "FALSE")
                self._send(404)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def preempt(self) -> float:
        """The notice: the VM will be taken ``lead_s`` from now (whole seconds, as the clouds give it)."""
        self.taken_at = float(int(time.time() + self.lead_s))
        return self.taken_at

    def __enter__(self) -> "MetadataServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
