"""The demo's HTTP server: the standard library's ThreadingHTTPServer, a JSON API and one static page.

    GET  /api/info       -> the backend's info (model, sampler, dtype, device, defaults, limits)
    POST /api/generate   {"prompt", "negative_prompt", "seed", "steps", "guidance", "height", "width"}
                         (all optional but the prompt) -> the backend's answer (images as PNG data URLs)
    POST /api/refine     the same fields (+ "strength") -> that image refined by the SDXL Refiner (--refiner)
    GET  /, /demo.js, /demo.css   the page (sd/web/static/), nothing else: no path from a request
                                  reaches the file system

Safe by default: one generation at a time (a lock), at most `queue` more waiting (503 beyond), bodies
capped (413, answered before the body is read, which is then drained so that the client reads the answer),
every field checked (400 with {"error": "..."} naming the field; a backend that cannot honour a field, the mini's
steps, refuses it by name), unknown paths 404, a request whose body is slow or never comes timed out (408),
a client that went away one log line.
"""
import json
import math
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

STATIC = Path(__file__).with_name("static")
PAGES = {"/": ("index.html", "text/html; charset=utf-8"), "/index.html": ("index.html", "text/html; charset=utf-8"),
         "/demo.js": ("demo.js", "text/javascript; charset=utf-8"), "/demo.css": ("demo.css", "text/css; charset=utf-8")}
MAX_BODY = 16 * 1024
DRAIN = 64 * 2**20          # at most this much of a refused body is read (and dropped) so its client sees the 413
FIELDS = ("prompt", "negative_prompt", "seed", "steps", "guidance", "height", "width")


class BadRequest(ValueError):
    """A request the API refuses: (HTTP status, message)."""

    def __init__(self, message, status=HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


def _int(body, name, lo, hi):
    v = body[name]
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadRequest(f"{name}: an integer is needed, got {json.dumps(v)}")
    if not lo <= v <= hi:
        raise BadRequest(f"{name}: {v} is outside {lo}..{hi}")
    return v


def _number(body, name, lo, hi, low_open=False):
    v = body[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise BadRequest(f"{name}: a number is needed, got {json.dumps(v)}")
    if not (lo < v if low_open else lo <= v) or not v <= hi:
        raise BadRequest(f"{name}: {v} is outside " + (f"({lo}, {hi}]" if low_open else f"{lo}..{hi}"))
    return float(v)


def parse_request(raw, limits, fields=FIELDS):
    """The checked parameters of a /api/generate (or /api/refine: `fields` with "strength") body (bytes).
    limits: prompt_chars, and steps (lo, hi), guidance (lo, hi), side (lo, hi), multiple for the fields taken;
    "fixed": why the fields a backend does not take are fixed. Raises BadRequest naming the field."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"body: not JSON ({e})") from None
    if not isinstance(body, dict):
        raise BadRequest("body: a JSON object is needed")
    unknown = sorted(set(body) - set(fields))
    if unknown and unknown[0] in FIELDS and "fixed" in limits:
        raise BadRequest(f"{unknown[0]}: not taken here ({limits['fixed']}); valid: {', '.join(fields)}")
    if unknown:
        raise BadRequest(f"{unknown[0]}: unknown field (valid: {', '.join(fields)})")
    out = {}
    for name in ("prompt", "negative_prompt"):
        if name in body:
            v = body[name]
            if not isinstance(v, str):
                raise BadRequest(f"{name}: a string is needed, got {json.dumps(v)}")
            if len(v) > limits["prompt_chars"]:
                raise BadRequest(f"{name}: too long ({len(v)} characters; at most {limits['prompt_chars']})")
            out[name] = v
    if not out.get("prompt", "").strip():
        raise BadRequest("prompt: missing or empty")
    if "seed" in body:
        out["seed"] = _int(body, "seed", 0, 2**63 - 1)
    if "steps" in body:
        out["steps"] = _int(body, "steps", *limits["steps"])
    if "guidance" in body:
        out["guidance"] = _number(body, "guidance", *limits["guidance"])
    if "strength" in body:
        out["strength"] = _number(body, "strength", 0, 1, low_open=True)
    for name in ("height", "width"):
        if name in body:
            v = _int(body, name, *limits["side"])
            if v % limits["multiple"]:
                raise BadRequest(f"{name}: {v} is not a multiple of {limits['multiple']}")
            out[name] = v
    return out


class Gate:
    """One generation at a time, at most `queue` more waiting: enter() is False when full."""

    def __init__(self, queue):
        self.slots = threading.BoundedSemaphore(queue + 1)
        self.lock = threading.Lock()

    def enter(self):
        return self.slots.acquire(blocking=False)

    def run(self, fn):
        try:
            with self.lock:
                return fn()
        finally:
            self.slots.release()


def make_server(backend, host="127.0.0.1", port=7860, queue=4, quiet=False, request_timeout=30.0):
    """A ThreadingHTTPServer serving `backend` (info() -> dict, limits() -> dict with "fields", the fields its
    generate takes, generate(params) -> dict). request_timeout: seconds a client may take to send its request's
    body (and each read of its headers)."""
    gate = Gate(queue)
    fields = tuple(backend.limits()["fields"])
    routes = {"/api/generate": fields, "/api/refine": fields + ("strength",)}

    class Handler(BaseHTTPRequestHandler):
        server_version = "rectflow-demo"
        timeout = request_timeout          # the socket's, for every read and write

        def log_message(self, fmt, *args):
            if not quiet:
                super().log_message(fmt, *args)

        def send(self, status, body, ctype="application/json"):
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/api/info":
                return self.send(HTTPStatus.OK, {**backend.info(), "limits": backend.limits()})
            if path in PAGES:
                name, ctype = PAGES[path]
                return self.send(HTTPStatus.OK, (STATIC / name).read_bytes(), ctype)
            self.send(HTTPStatus.NOT_FOUND, {"error": f"{path}: not found"})

        def do_POST(self):
            route = self.path.split("?", 1)[0]
            if route not in routes or (route == "/api/refine" and not backend.info().get("refiner")):
                return self.send(HTTPStatus.NOT_FOUND, {"error": f"{self.path}: not found (POST /api/generate"
                                                                 + (", /api/refine)" if backend.info().get("refiner") else ")")})
            try:
                n = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                n = -1
            if n < 0:
                return self.send(HTTPStatus.BAD_REQUEST, {"error": "Content-Length: not a length"})
            if n > MAX_BODY:
                self.close_connection = True
                self.send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body: {n} bytes; at most {MAX_BODY}"})
                return self.drain(min(n, DRAIN))
            try:
                raw = self.read_body(n)
            except TimeoutError:
                self.close_connection = True
                return self.send(HTTPStatus.REQUEST_TIMEOUT,
                                 {"error": f"body: not received within {request_timeout:g} s"})
            try:
                params = parse_request(raw, backend.limits(), routes[route])
            except BadRequest as e:
                return self.send(e.status, {"error": str(e)})
            if not gate.enter():
                return self.send(HTTPStatus.SERVICE_UNAVAILABLE,
                                 {"error": f"busy: one generation runs and {queue} wait; try again"})
            try:
                run = backend.refine if route == "/api/refine" else backend.generate
                self.send(HTTPStatus.OK, gate.run(lambda: run(params)))
            except (ValueError, RuntimeError) as e:           # the model's own refusal (a size it cannot take, ...)
                self.send(HTTPStatus.BAD_REQUEST, {"error": str(e)})

        def read_body(self, n, keep=True):
            """n bytes of body within one deadline for all of it (a client trickling bytes cannot hold the thread);
            keep=False drops them. Raises TimeoutError at the deadline."""
            end, parts = time.monotonic() + request_timeout, []
            try:
                while n > 0:
                    left = end - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    self.connection.settimeout(left)
                    chunk = self.rfile.read1(min(n, 1 << 16))
                    if not chunk:
                        break
                    if keep:
                        parts.append(chunk)
                    n -= len(chunk)
            finally:
                self.connection.settimeout(request_timeout)
            return b"".join(parts)

        def drain(self, n):
            """Read and drop up to n bytes of a refused body (until the client stops sending, or the deadline), so
            that closing does not reset the connection under an answer the client has not read yet."""
            try:
                self.read_body(n, keep=False)
            except OSError:                        # TimeoutError included: the answer is out, the client may go
                pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            """A client that went away (reset, broken pipe) is one log line, not a traceback."""
            kind = sys.exc_info()[0]
            if kind is not None and issubclass(kind, (ConnectionError, TimeoutError)):
                if not quiet:
                    print(f"{client_address[0]} - client went away ({kind.__name__})", file=sys.stderr, flush=True)
                return
            super().handle_error(request, client_address)

    server = Server((host, port), Handler)
    server.daemon_threads = True
    server.block_on_close = False          # closing (Ctrl-C) does not wait for a request thread that may hang
    return server
