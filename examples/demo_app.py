#!/usr/bin/env python3
"""A tiny app to run under `srvdns sidecar`: an HTTP server with a /health endpoint whose
answer can be flipped, so the sidecar has something to probe.

    srvdns sidecar --service demo --id demo-1 --address 127.0.0.1 --port 8080 \\
      --check-http http://127.0.0.1:8080/health -- python3 examples/demo_app.py --port 8080

    GET /         hello from the app
    GET /health   200 "ok", or 500 "failing" after /fail
    GET /fail     make /health fail (the sidecar reports critical: out of DNS)
    GET /recover  make /health pass again

SIGTERM and SIGINT stop it cleanly (exit 0): under the sidecar they arrive only after the
instance was drained out of DNS and deregistered.
"""

import argparse
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

healthy = threading.Event()
healthy.set()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            status, body = (200, "ok") if healthy.is_set() else (500, "failing")
        elif self.path == "/fail":
            healthy.clear()
            status, body = 200, "/health now fails"
        elif self.path == "/recover":
            healthy.set()
            status, body = 200, "/health now passes"
        elif self.path == "/":
            status, body = 200, f"hello from the demo app (pid {os.getpid()})"
        else:
            status, body = 404, "not found"
        data = (body + "\n").encode()
        self.send_response(status)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        if self.path != "/health":  # the sidecar probes often; keep the log readable
            super().log_message(format, *args)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    args = parser.parse_args()

    server = ThreadingHTTPServer((args.host, args.port), Handler)

    def stop(signum, _frame):
        print(f"demo app: {signal.Signals(signum).name}, stopping", flush=True)
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"demo app: listening on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
