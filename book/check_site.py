"""Open the built book in a real (headless) browser and check every chapter page.

Run after building the book (see README.md, "The book"), with playwright installed and a
Chromium on the machine (Debian: ``apt-get install chromium``; never ``playwright install``,
which downloads a browser)::

    python book/check_site.py [--html book/_build/html] [--chromium /usr/bin/chromium]

For each chapter in ``companion.notebook.CHAPTERS`` it checks that the page loads over HTTP
(served on 127.0.0.1 by this script), shows the notebook's title, has every figure decoded
(``img.complete`` and a non-zero natural width), shows no error output, and links to Binder and
Colab. It prints one row per page and exits non-zero if any check fails. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import sys
import threading
from pathlib import Path

from companion.notebook import CHAPTERS

ROOT = Path(__file__).resolve().parents[1]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the site without logging every request (the table below is the output)."""

    def log_message(self, format: str, *args) -> None:
        pass


def notebook_title(stem: str) -> str:
    """The text of the notebook's first heading, e.g. "Chapter 1: tokenization, text → integers"."""
    cells = json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text(encoding="utf-8"))["cells"]
    first = "".join(cells[0]["source"]).splitlines()[0]
    return first.lstrip("# ").strip()


def check_page(page, url: str, title: str) -> tuple[list[str], int]:
    """Problems found on one page (empty when it passes), and its number of figures."""
    response = page.goto(url, wait_until="load")
    if response is None or response.status != 200:
        return [f"HTTP {response.status if response else 'no response'}"], 0
    problems = []
    heading = page.inner_text("h1")
    if title not in heading.replace("#", "").strip():
        problems.append(f"heading {heading!r} does not show {title!r}")
    images = page.eval_on_selector_all(
        "main img", "imgs => imgs.map(i => [i.complete && i.naturalWidth > 0, i.src])"
    )
    broken = [src for ok, src in images if not ok]
    if broken:
        problems.append(f"{len(broken)} image(s) not shown: {broken[:3]}")
    if page.query_selector_all(".output.error, .output.traceback"):
        problems.append("an error output is shown")
    links = page.eval_on_selector_all("a", "as => as.map(a => a.href)")
    for service in ("mybinder.org", "colab.research.google.com"):
        if not any(service in link for link in links):
            problems.append(f"no launch link to {service}")
    return problems, len(images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", type=Path, default=ROOT / "book" / "_build" / "html")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)
    if not (args.html / "index.html").is_file():
        parser.error(f"{args.html} has no index.html: build the book first (README.md)")
    from playwright.sync_api import sync_playwright

    handler = functools.partial(QuietHandler, directory=str(args.html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    failures = 0
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page()
        for stem, _, _ in CHAPTERS:
            url = f"{base}/notebooks/{stem}.html"
            problems, images = check_page(page, url, notebook_title(stem))
            status = "ok" if not problems else "; ".join(problems)
            print(f"{stem + '.html':<28} {images:>3} figures  {status}")
            failures += bool(problems)
        browser.close()
    server.shutdown()
    print(f"{len(CHAPTERS) - failures} of {len(CHAPTERS)} pages pass")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
