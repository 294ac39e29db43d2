"""A webhook receiver as a department would run one, in a process of its own (tests start it
with subprocess and may kill it at any moment).

It verifies each delivery the Standard Webhooks way: HMAC-SHA256 keyed by the base64 part of
its ``whsec_`` secret over ``<webhook-id>.<webhook-timestamp>.<body>``, compared with every
``v1,<base64>`` signature in ``webhook-signature``, and the timestamp within five minutes.
Every delivery is appended to the log (one JSON object a line, flushed and synced) BEFORE the
answer goes out, so a delivery answered 2xx is on disk. A bad signature is logged with
``"valid": false`` and answered 401.

    python tests/webhook_receiver.py --port 8765 --secret whsec_... --log received.jsonl
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Lock
from typing import Any

TOLERANCE_SECONDS = 300


def expected_signature(secret: str, message_id: str, timestamp: str, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def verify(secret: str, headers: Any, body: bytes) -> str | None:
    """None when the delivery is genuine; otherwise what is wrong with it."""
    message_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not (message_id and timestamp.isdigit() and signatures):
        return "missing webhook headers"
    if abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
        return "timestamp outside the tolerance"
    wanted = expected_signature(secret, message_id, timestamp, body)
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, wanted):
            return None
    return "bad signature"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--status", type=int, default=204, help="answer to a genuine delivery")
    options = parser.parse_args()
    lock = Lock()
    log = open(options.log, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            problem = verify(options.secret, self.headers, body)
            record = {
                "id": self.headers.get("webhook-id"),
                "valid": problem is None,
                "problem": problem,
                "body": body.decode("utf-8", "replace"),
            }
            with lock:
                log.write(json.dumps(record) + "\n")
                log.flush()
                os.fsync(log.fileno())
            status = options.status if problem is None else 401
            answer = b"" if problem is None else problem.encode()
            self.send_response(status)
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            return

    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", options.port), Handler)
    print("listening", flush=True)
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
