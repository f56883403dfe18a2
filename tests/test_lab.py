"""The course as a learner meets it: JupyterLab in a real browser, widgets included.

Starts JupyterLab the way the README's first command does (no browser of its own, a free port on
127.0.0.1, a token) on copies of the notebooks in a temporary folder, and drives headless
Chromium (Debian's ``/usr/bin/chromium``) through playwright. For the start-here notebook and
every notebook that shows a widget (found by reading the notebooks, so a new chapter's widget is
covered without editing this file) it:

1. opens the notebook, runs all cells from the ``Run`` menu and waits until every code cell has
   run and the kernel is idle;
2. saves it and reads the saved file: every code cell ran, no output is an error;
3. checks the page: no traceback, each widget drawn as a widget (not "Loading widget…", "Error
   displaying widget" or the widget's text fallback);
4. moves one control of each widget (a slider one step, or a button click) and waits until the
   widget's displayed output changes;
5. keeps a screenshot of the notebook, with its first widget in view.

Lab is shut down whatever happens. The screenshots go to ``$COURSE_ARTIFACTS/lab`` (CI sets it)
or else to pytest's temporary folder; the run's summary prints where, and the test's time.

Chromium and playwright are not part of the README's set-up: without them the tests skip and say
why, unless ``COURSE_BROWSER_TESTS=require`` (set by ``.ci/run``), which makes that a failure.
Run them alone with ``python -m pytest -m lab``. Never ``playwright install`` (it downloads a
browser); install Chromium with the system's package manager (Debian: ``apt-get install
chromium``) and playwright from the ``book`` extra.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Headless, and quiet on the network: without the background-networking flags Chromium keeps
# trying to reach Google's hosts, which fails offline (CI runs the tests with loopback only).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # needed as root (CI runs in a container)
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
NOTEBOOK_TIMEOUT_S = 300  # the run of one notebook's cells in Lab (nbval's per-cell limit)
WIDGET_TIMEOUT_S = 60  # a widget's output to change after its control moves
# A notebook shows a widget when a code cell imports ipywidgets, displays an object's ``.widget``
# (the course's explorers: companion classes that hold their widgets) or uses ``interact``.
WIDGET_USE = re.compile(r"\bipywidgets\b|\.widget\b|\binteract(?:ive)?\(")
# Lab's settings for this run: every cell in the page (no windowing, so all outputs can be read),
# and no news or update pop-ups over the screenshots.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def shows_a_widget(path: Path) -> bool:
    """Whether any code cell of the notebook at ``path`` displays a widget."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return any(
        cell["cell_type"] == "code" and WIDGET_USE.search("".join(cell["source"])) for cell in cells
    )


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
LAB_NOTEBOOKS = [p.name for p in NOTEBOOKS if p.stem == "00_start_here" or shows_a_widget(p)]


# -- the browser and JupyterLab ------------------------------------------------------------


def _browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return (
            "playwright is not installed (it comes with the book extra: pip install -e '.[book]')"
        )
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; or set CHROMIUM)"
    return None


@pytest.fixture(scope="module")
def browser():
    missing = _browser_missing()
    if missing and os.environ.get("COURSE_BROWSER_TESTS") == "require":
        pytest.fail(f"COURSE_BROWSER_TESTS=require, but {missing}")
    if missing:
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # playwright gives Chromium a fresh, empty profile (--user-data-dir) of its own
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium.new_context(viewport={"width": 1400, "height": 1000})
        finally:
            chromium.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server on 127.0.0.1 serving ``folder``, started and stopped by the test."""

    def __init__(self, folder: Path, home: Path) -> None:
        self.folder, self.port, self.token = folder, _free_port(), os.urandom(16).hex()
        self.base = f"http://127.0.0.1:{self.port}"
        settings = home / "settings"
        for plugin, values in LAB_SETTINGS.items():
            file = settings / f"{plugin}.jupyterlab-settings"
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(json.dumps(values), encoding="utf-8")
        # Lab's own folders in the temporary home, so a learner's settings change nothing here.
        environment = {
            **os.environ,
            "JUPYTERLAB_SETTINGS_DIR": str(settings),
            "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
            "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTER_DATA_DIR": str(home / "data"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "IPYTHONDIR": str(home / "ipython"),
        }
        # The README's command, `jupyter lab notebooks/00_start_here.ipynb`, with what a test
        # needs instead of a browser of its own: a known port, a token, the copies' folder.
        command = [
            sys.executable, "-m", "jupyter", "lab", "--no-browser",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={folder}",
        ]  # fmt: skip
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")  # as the README says, inside a container as root
        self.log = (home / "lab.log").open("w")
        self.process = subprocess.Popen(
            command, cwd=folder, env=environment, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the kernels go down with it
        )  # fmt: skip
        self.log_path = home / "lab.log"

    def wait_until_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited ({self.process.returncode}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.api("status"), timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s:\n{self.tail()}")

    def api(self, path: str) -> str:
        return f"{self.base}/api/{path}?token={self.token}"

    def url(self, notebook: str) -> str:
        return f"{self.base}/lab/tree/{notebook}?token={self.token}&reset"

    def shut_down_kernels(self) -> None:
        """Stop every running kernel, so the next notebook has the CPU to itself."""
        with urllib.request.urlopen(self.api("sessions"), timeout=10) as response:
            sessions = json.load(response)
        for session in sessions:
            request = urllib.request.Request(self.api(f"sessions/{session['id']}"), method="DELETE")
            urllib.request.urlopen(request, timeout=30).close()

    def stop(self) -> None:
        """SIGTERM (Lab stops its kernels), then SIGKILL to the group if it hangs."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log.close()

    def tail(self, lines: int = 30) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def lab(browser, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lab-notebooks")
    for path in NOTEBOOKS:  # copies: the test runs and saves them, notebooks/ stays as it is
        shutil.copy(path, folder / path.name)
    server = Lab(folder, tmp_path_factory.mktemp("lab-home"))
    try:
        server.wait_until_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    artifacts = os.environ.get("COURSE_ARTIFACTS")
    folder = Path(artifacts) / "lab" if artifacts else tmp_path_factory.mktemp("lab-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# -- what the page shows --------------------------------------------------------------------

# Settled: the kernel is idle and either every code cell's prompt is "[n]:" (all ran) or an output
# shows a traceback (an error stops "Run All"; the cells after it stay "[ ]:").
SETTLED = """() => {
    if (!document.body.innerText.includes('| Idle')) return false;
    const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')];
    if (prompts.length && prompts.every(p => /^\\[\\d+\\]:$/.test(p.innerText.trim()))) return 'ran';
    const stderr = document.querySelectorAll(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]');
    return [...stderr].some(o => o.innerText.includes('Traceback')) ? 'error' : false;
}"""
# What a widget displays, with its controls taken out (a slider's readout moves with the slider).
WIDGET_VIEW = """view => {
    const copy = view.cloneNode(true);
    copy.querySelectorAll('.widget-slider, .widget-dropdown, .widget-button, .widget-toggle-button,'
        + ' .widget-toggle-buttons, .widget-checkbox, .widget-text, .widget-textarea')
        .forEach(control => control.remove());
    return copy.innerText + ' | ' + [...view.querySelectorAll('img')].map(i => i.src).join(' ');
}"""
# The widgets drawn in output areas: one root view per displayed widget.
ROOT_WIDGETS = ".jp-OutputArea-output > .jupyter-widgets"
WIDGET_TROUBLE = ("Error displaying widget", "Loading widget", "model not found")


def run_all_cells(page, notebook: str) -> None:
    page.wait_for_function("document.body.innerText.includes('| Idle')", timeout=120_000)
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_text("Run All Cells", exact=True).click()
    settled = page.wait_for_function(SETTLED, timeout=NOTEBOOK_TIMEOUT_S * 1000, polling=500)
    assert settled.json_value() == "ran", f"{notebook}: not every cell ran: {page_errors(page)}"


def save(page, path: Path) -> dict:
    """Save from the File menu and read the saved notebook back."""
    before = path.stat().st_mtime_ns
    page.get_by_role("menuitem", name="File", exact=True).click()
    page.get_by_text("Save Notebook", exact=True).first.click()
    deadline = time.monotonic() + 60
    while path.stat().st_mtime_ns == before:
        assert time.monotonic() < deadline, f"{path.name} was not saved"
        time.sleep(0.2)
    time.sleep(0.5)  # let the writer finish
    return json.loads(path.read_text(encoding="utf-8"))


def page_errors(page) -> list[str]:
    """Tracebacks shown in output areas (Lab draws error outputs as stderr)."""
    texts = page.eval_on_selector_all(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]',
        "outputs => outputs.map(o => o.innerText)",
    )
    return [text[:600] for text in texts if "Traceback" in text or re.search(r"^\w+Error\b", text)]


def move_one_control(page, view) -> str:
    """Move a slider one step (towards the side it has room on) or click a button; say which."""
    handle = view.locator(".noUi-handle").first
    if handle.count():
        value = float(handle.get_attribute("aria-valuenow"))
        key = "ArrowRight" if value < float(handle.get_attribute("aria-valuemax")) else "ArrowLeft"
        handle.focus()
        page.keyboard.press(key)
        return f"slider {key}"
    button = view.locator("button.jupyter-button").first
    if button.count():
        button.click()
        return "button click"
    return ""


# -- the test -------------------------------------------------------------------------------


def test_widget_notebooks_are_found(tmp_path):
    """The start page is opened, and every notebook whose code displays a widget."""

    def notebook(*sources: str) -> Path:
        cells = [{"cell_type": "markdown", "source": ["An explorer.widget in prose"]}]
        cells += [{"cell_type": "code", "source": [source]} for source in sources]
        path = tmp_path / f"nb{len(list(tmp_path.iterdir()))}.ipynb"
        path.write_text(json.dumps({"cells": cells}), encoding="utf-8")
        return path

    assert shows_a_widget(notebook("x = 1", "display(explorer.widget)"))
    assert shows_a_widget(notebook("import ipywidgets as widgets"))
    assert shows_a_widget(notebook("interact(f, k=(0, 10))"))
    assert not shows_a_widget(notebook("print('no widget here')"))
    assert LAB_NOTEBOOKS[0] == "00_start_here.ipynb"


@pytest.mark.parametrize("notebook", LAB_NOTEBOOKS)
def test_notebook_in_lab(notebook, lab, browser, screenshots, record_property):
    start = time.perf_counter()
    shot = screenshots / f"{Path(notebook).stem}.png"
    page = browser.new_page()
    try:
        page.goto(lab.url(notebook), wait_until="domcontentloaded")
        run_all_cells(page, notebook)

        # 1. The saved notebook: every code cell ran, nothing raised.
        saved = save(page, lab.folder / notebook)
        code = [cell for cell in saved["cells"] if cell["cell_type"] == "code"]
        not_run = [i for i, cell in enumerate(code) if cell["execution_count"] is None]
        assert not not_run, f"{notebook}: code cells {not_run} did not run"
        errors = [
            f"{o['ename']}: {o['evalue']}"
            for cell in code
            for o in cell["outputs"]
            if o["output_type"] == "error"
        ]
        assert not errors, f"{notebook}: error outputs {errors}"
        widgets_saved = sum(
            WIDGET_MIME in o.get("data", {}) for cell in code for o in cell["outputs"]
        )

        # 2. The page: no traceback, every widget drawn as a widget.
        assert not page_errors(page), f"{notebook}: the page shows {page_errors(page)}"
        views = page.locator(ROOT_WIDGETS)
        assert views.count() == widgets_saved, (
            f"{notebook}: {widgets_saved} widget output(s) saved, {views.count()} drawn as widgets"
        )
        body = page.inner_text("body")
        trouble = [text for text in WIDGET_TROUBLE if text in body]
        assert not trouble, f"{notebook}: the page says {trouble}"
        if shows_a_widget(lab.folder / notebook):
            assert widgets_saved, f"{notebook} uses a widget, but none was displayed"

        # 3. Each widget answers its control.
        moved = []
        for index in range(views.count()):
            view = views.nth(index)
            view.scroll_into_view_if_needed()
            before = view.evaluate(WIDGET_VIEW)
            how = move_one_control(page, view)
            if not how:
                continue  # a display-only widget (a progress bar): drawn, nothing to move
            try:
                page.wait_for_function(
                    f"([view, before]) => ({WIDGET_VIEW})(view) !== before",
                    arg=[view.element_handle(), before],
                    timeout=WIDGET_TIMEOUT_S * 1000,
                    polling=250,
                )
            except Exception as error:
                raise AssertionError(
                    f"{notebook}: widget {index} did not change after a {how}"
                ) from error
            moved.append(how)
        if widgets_saved:
            assert moved, f"{notebook}: no widget has a slider or button to move"
        assert not page_errors(page), f"{notebook}: after moving: {page_errors(page)}"

        # 4. A picture of it, with the first widget in view (taken below, pass or fail).
        if views.count():
            views.first.scroll_into_view_if_needed()
        seconds = time.perf_counter() - start
        record_property(
            "lab",
            f"{notebook:<28} {seconds:6.1f} s  {widgets_saved} widget(s), moved: "
            f"{', '.join(moved) or '-'}  screenshot {shot}",
        )
    finally:
        with contextlib.suppress(Exception):  # a picture of a failure helps; never mask it
            page.screenshot(path=str(shot))
        page.close()
        with contextlib.suppress(OSError):
            lab.shut_down_kernels()
