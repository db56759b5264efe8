"""The README's screenshot of the demo page: `python -m sd.demo --mini RUN` served here, a prompt typed
into Debian's chromium through Playwright (requirements-dev.txt; `apt-get install chromium`), the page saved.

    python bench/demo_screenshot.py [RUN_FOLDER (runs/mini)] [OUT (docs/figures/demo.png)]
"""
import shutil
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sd.web.backends import MiniBackend  # noqa: E402
from sd.web.server import make_server  # noqa: E402


def main(run="runs/mini", out="docs/figures/demo.png"):
    from playwright.sync_api import sync_playwright
    server = make_server(MiniBackend(run), port=0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 960, "height": 760})
        page.goto(url)
        page.wait_for_function("document.querySelectorAll('#results img').length === 3")
        for prompt, seed in (("a green square at the bottom right", 4), ("a blue circle at the top right", 2),
                             ("a yellow square at the bottom left", 1), ("a red circle at the top left", 5)):
            page.fill("#seed", str(seed))
            first = page.get_attribute("#results img", "src")
            page.fill("#prompt", "")
            page.type("#prompt", prompt, delay=10)
            page.wait_for_function(f"document.querySelector('#results img').src !== {first!r}")
            page.wait_for_timeout(400)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=out, full_page=True)
        browser.close()
    server.shutdown()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
