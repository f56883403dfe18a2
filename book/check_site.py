"""Open the built book in a real (headless) browser and check every chapter page.

Run after building the book (see README.md, "The book"), with playwright installed and a
Chromium on the machine (Debian: ``apt-get install chromium``; never ``playwright install``,
which downloads a browser)::

    python book/check_site.py [--html book/_build/html] [--chromium /usr/bin/chromium]

It serves the site on 127.0.0.1 (nothing else is fetched; CI runs it with loopback only) and
checks:

1. the site opens on the start page, and its sidebar lists every chapter of
   ``companion.notebook.CHAPTERS`` after it, in course order (the solutions pages under the
   chapters and the teacher's guide, in other folders, besides them);
2. on each chapter's page: it loads, shows the notebook's title, has every figure decoded
   (``img.complete`` and a non-zero natural width), shows no error output, and links to Binder
   and Colab with the addresses of :func:`companion.notebook.launch_links` (the configured
   repository, and that notebook's path), and to no other notebook on either;
3. where a page has a widget (blank on a static page: it needs a kernel), the widget's section
   also shows a figure, the static picture of what the widget does.

It prints one row per page and exits non-zero if any check fails.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import sys
import threading
from pathlib import Path

from companion.notebook import CHAPTERS, launch_links

ROOT = Path(__file__).resolve().parents[1]
# As root (CI) Chromium needs --no-sandbox; the network flags keep it from calling Google's
# hosts, which fails offline.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# For each widget on the page: how many decoded figures (outside widget outputs) its section has.
FIGURES_BESIDE_WIDGETS = """scripts => scripts.map(s => {
    const section = s.closest('section') || document.body;
    return [...section.querySelectorAll('img')]
        .filter(i => i.complete && i.naturalWidth > 0).length;
})"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the site without logging every request (the table below is the output)."""

    def log_message(self, format: str, *args) -> None:
        pass


class QuietServer(http.server.ThreadingHTTPServer):
    """Says nothing when the browser drops a connection (it does when a page moves on)."""

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def notebook_title(stem: str) -> str:
    """The text of the notebook's first heading, e.g. "Chapter 1: tokenization, text → integers"."""
    cells = json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text(encoding="utf-8"))["cells"]
    first = "".join(cells[0]["source"]).splitlines()[0]
    return first.lstrip("# ").strip()


def check_start(page, base: str) -> list[str]:
    """Problems with the site's entry: the start page first, then every chapter in order."""
    start = CHAPTERS[0][0]
    page.goto(f"{base}/index.html")  # a redirect (meta refresh) to the root page
    try:
        page.wait_for_url(f"**/notebooks/{start}.html", timeout=10_000)
    except Exception:
        return [f"the site opens on {page.url}, not {start}.html"]
    page.wait_for_load_state("load")
    listed = page.eval_on_selector_all(
        "nav.bd-docs-nav ul.bd-sidenav:not(.bd-sidenav__home-link) a",
        "links => links.map(a => a.getAttribute('href'))",
    )
    expected = [f"{stem}.html" for stem, _, _ in CHAPTERS[1:]]
    chapters = [href for href in listed if "/" not in href]  # the pages beside the start page
    if chapters != expected:
        return [f"the sidebar lists {chapters}, expected {expected}"]
    if "../TEACHING.html" not in listed:  # the solutions and the guide live in other folders
        return [f"the sidebar lists {listed}, without the teacher's guide ../TEACHING.html"]
    return []


def check_launch_links(links: list[str], stem: str) -> list[str]:
    """The page links to this notebook on Binder and on Colab, and to no other notebook there."""
    problems = []
    for service, url in launch_links(stem).items():
        host = url.split("/")[2]
        if url not in links:
            problems.append(f"no {service} link to {url}")
        others = {link for link in links if host in link and link != url}
        if others:
            problems.append(f"{service} links to other addresses: {sorted(others)}")
    return problems


def check_page(page, url: str, stem: str) -> tuple[list[str], int, int]:
    """Problems found on one page (empty when it passes), its figures and its widgets."""
    response = page.goto(url, wait_until="load")
    if response is None or response.status != 200:
        return [f"HTTP {response.status if response else 'no response'}"], 0, 0
    problems = []
    heading = page.inner_text("h1")
    title = notebook_title(stem)
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
    problems += check_launch_links(
        page.eval_on_selector_all("a", "as => as.map(a => a.href)"), stem
    )
    beside = page.eval_on_selector_all(
        'script[type="application/vnd.jupyter.widget-view+json"]', FIGURES_BESIDE_WIDGETS
    )
    if any(figures == 0 for figures in beside):
        problems.append("a widget's section shows no static figure of what the widget does")
    return problems, len(images), len(beside)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", type=Path, default=ROOT / "book" / "_build" / "html")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)
    if not (args.html / "index.html").is_file():
        parser.error(f"{args.html} has no index.html: build the book first (README.md)")
    from playwright.sync_api import sync_playwright

    handler = functools.partial(QuietHandler, directory=str(args.html))
    server = QuietServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    failures = 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        page = browser.new_page()
        problems = check_start(page, base)
        print(f"{'index.html':<28} {'':>19}  {'; '.join(problems) or 'ok'}")
        failures += bool(problems)
        for stem, _, _ in CHAPTERS:
            url = f"{base}/notebooks/{stem}.html"
            problems, images, widgets = check_page(page, url, stem)
            status = "; ".join(problems) or "ok"
            print(f"{stem + '.html':<28} {images:>3} figures {widgets:>2} widgets  {status}")
            failures += bool(problems)
        browser.close()
    server.shutdown()
    pages = len(CHAPTERS) + 1
    print(f"{pages - failures} of {pages} checks pass")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
