"""python -m sd.demo: the JSON API on an ephemeral port with the tiny SD model (info, a generate equal to
sd.generate's image, every refusal, a burst of concurrent requests, paths outside the page), the command
line (its errors, the warning for another host, Ctrl-C), the mini mode, and the page in a real browser
(Debian's chromium driven by Playwright; skipped where either is missing, installed by .ci/run)."""
import base64
import http.client
import io
import json
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from sd.sampling.pipeline import load_pipeline
from sd.web.backends import MiniBackend, PipelineBackend
from sd.web.server import MAX_BODY, make_server
from tests.conftest import ROOT

pytest.importorskip("diffusers")
SIZE = dict(height=32, width=32)


def png(data_url):
    import matplotlib.image
    assert data_url.startswith("data:image/png;base64,")
    return (matplotlib.image.imread(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))[..., :3] * 255).round()


def serve(backend, queue=4, **kw):
    server = make_server(backend, port=0, queue=queue, **{"quiet": True, **kw})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def call(url, body=None, raw=None, method=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.tiny_sd import tiny_sd_folder
    model = tiny_sd_folder(tmp_path_factory.mktemp("tiny-sd"))
    server, url = serve(PipelineBackend(load_pipeline(model), "tiny", steps=1, size=32, max_side=256))
    yield model, url
    server.shutdown()
    server.server_close()


def test_info_names_the_model_and_its_limits(tiny):
    status, body = call(tiny[1] + "/api/info")
    info = json.loads(body)
    assert status == 200 and info["mode"] == "model" and info["model"] == "tiny" and info["sampler"] == "euler"
    assert info["defaults"]["height"] == 32 and info["limits"]["steps"] == [1, 50] and info["limits"]["side"] == [16, 256]


def test_generate_equals_sd_generate_pixel_for_pixel(tiny, tmp_path):
    model, url = tiny
    status, body = call(url + "/api/generate", {"prompt": "a red circle", "seed": 7, "steps": 2, "guidance": 2.0, **SIZE})
    answer = json.loads(body)
    assert status == 200 and answer["seed"] == 7
    assert len(answer["seconds"]["steps"]) == 2 and answer["seconds"]["total"] > 0
    out = tmp_path / "x.png"
    r = subprocess.run([sys.executable, "-m", "sd.generate", "--model", str(model), "--prompt", "a red circle",
                        "--seed", "7", "--steps", "2", "--guidance", "2", "--height", "32", "--width", "32",
                        "--out", str(out), "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    import matplotlib.image
    assert np.array_equal(png(answer["image"]), (matplotlib.image.imread(out)[..., :3] * 255).round())
    _, other = call(url + "/api/generate", {"prompt": "a red circle", "seed": 8, "steps": 2, "guidance": 2.0, **SIZE})
    assert not np.array_equal(png(json.loads(other)["image"]), png(answer["image"]))      # the seed matters
    _, picked = call(url + "/api/generate", {"prompt": "a cat", **SIZE})
    assert isinstance(json.loads(picked)["seed"], int)                                     # no seed: one is picked


@pytest.mark.parametrize("body, status, message", [
    ({"prompt": "x", "steps": 0}, 400, "steps: 0 is outside 1..50"),
    ({"prompt": "x", "steps": 51}, 400, "steps: 51 is outside 1..50"),
    ({"prompt": "x", "steps": 1.5}, 400, "steps: an integer is needed"),
    ({"prompt": "x", "height": 36}, 400, "height: 36 is not a multiple of 8"),
    ({"prompt": "x", "width": 2048}, 400, "width: 2048 is outside 16..256"),
    ({"prompt": "x" * 1001}, 400, "prompt: too long (1001 characters; at most 1000)"),
    ({"prompt": ""}, 400, "prompt: missing or empty"),
    ({"seed": 1}, 400, "prompt: missing or empty"),
    ({"prompt": 3}, 400, "prompt: a string is needed"),
    ({"prompt": "x", "seed": "1"}, 400, "seed: an integer is needed"),
    ({"prompt": "x", "seed": True}, 400, "seed: an integer is needed"),
    ({"prompt": "x", "seed": -1}, 400, "seed: -1 is outside"),
    ({"prompt": "x", "guidance": "high"}, 400, "guidance: a number is needed"),
    ({"prompt": "x", "guidance": 31}, 400, "guidance: 31 is outside 0.0..30.0"),
    ({"prompt": "x", "sampler": "ddim"}, 400, "sampler: unknown field"),
    ([1, 2], 400, "body: a JSON object is needed"),
])
def test_bad_requests_get_their_status_and_the_field(tiny, body, status, message):
    code, answer = call(tiny[1] + "/api/generate", body)
    assert code == status and message in json.loads(answer)["error"]


def test_malformed_and_oversized_bodies(tiny):
    code, answer = call(tiny[1] + "/api/generate", raw=b"{not json")
    assert code == 400 and json.loads(answer)["error"].startswith("body: not JSON")
    code, answer = call(tiny[1] + "/api/generate", raw=b"NaN")
    assert code == 400
    code, answer = call(tiny[1] + "/api/generate", raw=json.dumps({"prompt": "x", "guidance": float("nan")}).encode())
    assert code == 400 and "guidance: a number is needed" in json.loads(answer)["error"]
    code, answer = call(tiny[1] + "/api/generate", raw=b"x" * (MAX_BODY + 1))
    assert code == 413 and f"at most {MAX_BODY}" in json.loads(answer)["error"]


@pytest.mark.parametrize("path", ["/../../etc/passwd", "/sd/web/server.py", "/static/index.html", "/demo.js/..",
                                  "/api/generate/../info", "/%2e%2e/README.md"])
def test_only_the_page_is_served(tiny, path):
    code, _ = call(tiny[1] + path)
    assert code == 404
    assert call(tiny[1] + "/")[0] == 200 and call(tiny[1] + "/demo.js")[0] == 200 and call(tiny[1] + "/demo.css")[0] == 200


def raw_request(url, method, path, headers=(), body=b""):
    """A request sent exactly as written (urllib would normalise the path): (status, body)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders(body or None)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


SERVER_PY = (ROOT / "sd" / "web" / "server.py").read_bytes()[:60]


@pytest.mark.parametrize("path", ["/../server.py", "/../../../README.md", "/%2e%2e/server.py", "/..%2fserver.py",
                                  "/static/../../server.py", "/./demo.js/../../server.py", "//../server.py"])
def test_no_path_reaches_a_file_beside_the_page(tiny, path):
    """Paths that name files which exist next to the page's folder (sd/web/static/../server.py, the README),
    sent raw: each is a 404 with the JSON error, never the file."""
    code, body = raw_request(tiny[1], "GET", path)
    assert code == 404 and SERVER_PY not in body and b"# rectflow" not in body, (code, body[:80])
    assert "not found" in json.loads(body)["error"]


def test_a_body_of_exactly_the_cap_is_read_and_one_more_byte_is_refused(tiny):
    body = json.dumps({"prompt": "a cat", **SIZE}).encode()
    exact = body + b" " * (MAX_BODY - len(body))               # valid JSON padded to the cap
    code, answer = call(tiny[1] + "/api/generate", raw=exact)
    assert len(exact) == MAX_BODY and code == 200, answer[:200]
    code, answer = call(tiny[1] + "/api/generate", raw=exact + b" ")
    assert code == 413 and f"at most {MAX_BODY}" in json.loads(answer)["error"]


def test_a_large_declared_length_is_refused_without_waiting_for_the_body(tiny):
    """Content-Length of a gigabyte and no body: the 413 comes at once (a server that read first would wait
    for the body, and the client's 20 s timeout would fail the test)."""
    code, answer = raw_request(tiny[1], "POST", "/api/generate",
                               [("Content-Type", "application/json"), ("Content-Length", str(10 ** 9))])
    assert code == 413 and f"at most {MAX_BODY}" in json.loads(answer)["error"]


@pytest.fixture(scope="module")
def impatient(tiny):
    """The tiny model behind a server that gives a client 1 s to send its request, and logs."""
    server, url = serve(PipelineBackend(load_pipeline(tiny[0]), "tiny", steps=1, size=32, max_side=256),
                        request_timeout=1.0, quiet=False)
    yield url
    server.shutdown()
    server.server_close()


def half_request(url, declared=100, sent=b'{"prompt": "a'):
    """A POST that declares `declared` bytes of body and sends only `sent`: the socket, left open."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % declared + sent)
    return s


def test_slow_clients_time_out_and_do_not_stop_others(impatient):
    """Twenty clients that never finish their body: the others are served meanwhile, and each slow one gets a
    408 after the server's timeout (1 s here), its thread freed."""
    slow = [half_request(impatient) for _ in range(20)]
    try:
        assert call(impatient + "/api/info")[0] == 200
        t0 = time.perf_counter()
        answers = [s.recv(4096) for s in slow]
        assert all(a.split(b"\r\n")[0].endswith(b"408 Request Timeout") for a in answers), answers[0][:100]
        assert time.perf_counter() - t0 < 8
    finally:
        for s in slow:
            s.close()


def test_a_client_that_vanishes_leaves_one_log_line(impatient, capfd):
    """A client that resets its connection before the answer: the server says so in one line, no traceback."""
    host, port = impatient.removeprefix("http://").split(":")
    body = json.dumps({"prompt": "a cat", **SIZE}).encode()
    s = socket.create_connection((host, int(port)), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))      # close = reset, at once
    s.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    s.close()
    err = ""
    for _ in range(300):                                       # the generation ends, then its answer meets the reset
        err += capfd.readouterr().err
        if "went away" in err:
            break
        time.sleep(0.1)
    assert "client went away" in err and "Traceback" not in err, err[-2000:]


def test_an_oversized_body_still_being_sent_gets_its_413(tiny):
    """8 MiB sent in full by a client that reads the answer only then: the server answers 413 at once and drains
    the body, so the client reads the answer instead of a reset connection."""
    code, answer = raw_request(tiny[1], "POST", "/api/generate", [("Content-Type", "application/json"),
                                                                    ("Content-Length", str(8 * 2**20))],
                               body=b" " * (8 * 2**20))
    assert code == 413 and f"at most {MAX_BODY}" in json.loads(answer)["error"]


class Slow:
    """A backend whose generation takes 0.3 s: a burst then surely finds the one running and the queue full."""

    def __init__(self, inner):
        self.inner, self.info, self.limits = inner, inner.info, inner.limits

    def generate(self, params):
        time.sleep(0.3)
        return self.inner.generate(params)


def test_a_burst_of_requests_is_answered_and_the_server_still_serves(tiny):
    """20 at once: each gets 200 or 503 (one generates, 4 wait, the rest are told to come back), and the
    server serves afterwards."""
    server, url = serve(Slow(PipelineBackend(load_pipeline(tiny[0]), "tiny", size=32)), queue=4)
    try:
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda k: call(url + "/api/generate", {"prompt": "x", "seed": k, **SIZE}), range(20)))
        codes = [c for c, _ in answers]
        assert set(codes) <= {200, 503} and codes.count(200) >= 5 and codes.count(503) >= 10, codes
        assert all("busy" in json.loads(b)["error"] for c, b in answers if c == 503)
        assert call(url + "/api/info")[0] == 200
        assert call(url + "/api/generate", {"prompt": "x", **SIZE})[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def demo(*args, **kw):
    return subprocess.run([sys.executable, "-m", "sd.demo", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, **kw)


def test_cli_errors_exit_2_before_loading(tmp_path):
    for args, message in [((), "give --model PATH_OR_ID or --mini RUN_FOLDER"),
                          (("--mini", tmp_path), "not a finished `python -m sd.mini` run"),
                          (("--model", tmp_path / "none", "--port", "70000"), "--port 70000: outside 0..65535"),
                          (("--model", tmp_path / "none", "--size", "500"), "--size must be a positive multiple of 8, got 500"),
                          (("--model", tmp_path / "none", "--steps", "0"), "--steps must be a positive integer"),
                          (("--mini", tmp_path, "--refiner", tmp_path), "not a finished"),
                          (("--model", tmp_path / "none", "--refiner", tmp_path, "--refine-strength", "0"),
                           "--refine-strength must lie in (0, 1]"),
                          (("--model", tmp_path / "none", "--refiner", tmp_path / "nope"), "nope: no such file or folder"),
                          (("--model", tmp_path / "none"), "no such file or folder")]:
        r = demo(*args)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)


def test_cli_serves_warns_for_another_host_and_stops_on_ctrl_c(tiny):
    # SIGINT back to its default in the child: a test run started in the background by a non-interactive shell
    # (`bash script &`) ignores SIGINT, which a child inherits, and Python then installs no KeyboardInterrupt
    p = subprocess.Popen([sys.executable, "-m", "sd.demo", "--model", str(tiny[0]), "--host", "0.0.0.0", "--port", "0",
                          "--size", "32"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = p.stdout.readline()
        assert "demo of" in line and "http://127.0.0.1:" in line, line + p.stderr.read()
        url = line.split("at ")[1].split("/ ")[0]
        assert json.loads(call(url + "/api/info")[1])["defaults"]["height"] == 32
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 0 and "stopped" in out and "other machines can reach this demo" in err


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT from a background script"])
def test_cli_stops_cleanly_on_sigterm_and_on_sigint_when_started_in_the_background(tiny, how):
    """A script's `python -m sd.demo ... &` starts with SIGINT ignored: kill -INT must still stop it, and so must
    kill -TERM, each with "stopped" and exit 0."""
    p = subprocess.Popen([sys.executable, "-m", "sd.demo", "--model", str(tiny[0]), "--port", "0", "--size", "32"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        line = p.stdout.readline()
        assert "demo of" in line, line + p.stderr.read()
        p.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 0 and "stopped" in out and "Traceback" not in err, err[-2000:]


@pytest.fixture(scope="module")
def mini(mini_fast):
    server, url = serve(MiniBackend(mini_fast / "run"))           # the session's `sd.mini --fast` run (conftest)
    yield url
    server.shutdown()
    server.server_close()


def test_mini_mode_answers_with_three_models(mini):
    info = json.loads(call(mini + "/api/info")[1])
    assert info["mode"] == "mini" and len(info["models"]) == 3 and info["defaults"]["height"] == 16
    assert info["limits"]["fields"] == ["prompt", "seed"] and "steps" not in info["limits"]   # what it takes, only
    for field, value in (("steps", 4), ("guidance", 2.0), ("height", 32), ("negative_prompt", "blurry")):
        code, answer = call(mini + "/api/generate", {"prompt": "a red circle", field: value})
        assert code == 400 and json.loads(answer)["error"].startswith(f"{field}: not taken here (--mini"), answer
    answer = json.loads(call(mini + "/api/generate", {"prompt": "a red circle at the top left", "seed": 1})[1])
    assert [r["model"] for r in answer["images"]] == info["models"]
    images = [png(r["image"]) for r in answer["images"]]
    assert all(i.shape == (16, 16, 3) for i in images) and not np.array_equal(images[0], images[2])


@pytest.fixture(scope="module")
def refining(tiny, refiner):
    """The tiny model with the tiny SDXL refiner: Refine at 0.5 of 8 steps, at 48 x 48 pixels."""
    from sd.sampling.refiner import load_refiner
    pipe = load_pipeline(tiny[0])
    pipe.refiner = load_refiner(refiner[0])
    server, url = serve(PipelineBackend(pipe, "tiny+refiner", steps=1, size=32, max_side=256,
                                        refine={"strength": 0.5, "steps": 8, "guidance": 5.0, "size": 48}))
    yield pipe, url
    server.shutdown()
    server.server_close()


def test_refine_regenerates_the_image_and_refines_it(refining, tiny):
    pipe, url = refining
    info = json.loads(call(url + "/api/info")[1])
    assert info["refiner"].endswith("model") and info["refine_defaults"]["strength"] == 0.5
    assert json.loads(call(tiny[1] + "/api/info")[1])["refiner"] is None
    body = {"prompt": "a red circle", "seed": 4, "steps": 1, **SIZE}
    code, answer = call(url + "/api/refine", {**body, "strength": 0.75})
    answer = json.loads(answer)
    assert code == 200 and answer["strength"] == 0.75 and len(answer["seconds"]["refine"]["steps"]) == 6
    one_step = pipe("a red circle", seed=4, progress=False, **SIZE).images[0]
    want = pipe.refine(one_step, "a red circle", size=48, strength=0.75, steps=8, guidance=5.0, seed=4, progress=False)
    assert np.array_equal(png(answer["image"]), want.images[0])
    for bad, message in (({**body, "strength": 0}, "strength: 0 is outside (0, 1]"),
                         ({**body, "strength": 1.5}, "strength: 1.5 is outside (0, 1]"),
                         ({**body, "strength": "x"}, "strength: a number is needed"),
                         ({**body, "strength": 0.1}, "runs no step")):
        code, answer = call(url + "/api/refine", bad)
        assert code == 400 and message in json.loads(answer)["error"], answer
    code, answer = call(url + "/api/generate", {**body, "strength": 0.5})      # generate takes no strength
    assert code == 400 and "strength: unknown field" in json.loads(answer)["error"]
    code, answer = call(tiny[1] + "/api/refine", body)                          # no refiner: no such route
    assert code == 404


# ---- the page in a real browser --------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM:
        pytest.skip("no chromium (Debian's package; .ci/run installs it)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def test_page_generates_shows_timing_and_errors(browser, tiny):
    page = browser.new_page()
    page.goto(tiny[1] + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('tiny')")
    page.fill("#prompt", "a blue square")
    page.fill("#seed", "3")
    page.click("#generate")
    page.wait_for_selector("#results img")
    assert "total" in page.text_content("#timing") and "VAE" in page.text_content("#timing")
    assert page.get_attribute("#results img", "src").startswith("data:image/png;base64,")
    assert page.locator("#history img").count() == 1
    page.fill("#steps", "0")
    page.click("#generate")
    page.wait_for_selector("#error:not([hidden])")
    assert "steps: 0 is outside 1..50" in page.text_content("#error")
    page.close()


def test_page_refines_the_last_image(browser, refining, tiny):
    page = browser.new_page()
    page.goto(tiny[1] + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('tiny')")
    assert not page.is_visible("#refine")                                       # no refiner, no button
    page.goto(refining[1] + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('refiner')")
    assert page.is_visible("#refine") and page.input_value("#strength") == "0.5"
    page.fill("#seed", "4")
    page.click("#generate")
    page.wait_for_selector("#results img")
    page.click("#refine")
    page.wait_for_function("document.getElementById('timing').textContent.includes('refiner')")
    assert "refined (strength 0.5)" in page.text_content("#results figcaption")
    assert page.locator("#history img").count() == 2
    page.close()


def test_page_in_mini_mode_regenerates_as_you_type(browser, mini, tmp_path):
    page = browser.new_page(viewport={"width": 1000, "height": 820})
    page.goto(mini + "/")
    page.wait_for_function("document.querySelectorAll('#results img').length === 3")
    first = page.get_attribute("#results img", "src")
    page.fill("#prompt", "")
    page.type("#prompt", "a green square at the bottom right", delay=5)
    page.wait_for_function(f"document.querySelector('#results img').src !== {json.dumps(first)}")
    assert page.locator("#results figure").count() == 3 and not page.is_visible("#steps")
    page.wait_for_timeout(500)
    page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    page.close()
