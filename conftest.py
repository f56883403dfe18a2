"""Shared pytest set-up (at the root, so it sees the notebooks too): notebooks run outside the
repository, the notebook budget table, the JupyterLab summary, and a temporary home for hypothesis.

Every notebook is executed by nbval (one fresh kernel per notebook, one pytest item per cell).

* **Outside the repository.** Each notebook's kernel starts in an empty temporary folder, not in
  ``notebooks/``: a notebook passes only if it runs when copied alone into an empty folder with
  the package installed (as on Colab, where the working directory is ``/content``), loading
  nothing by a path relative to the repository. On Linux the kernel's working directory is read
  back from ``/proc`` and a notebook whose kernel ran inside the repository fails.
* **Budget.** This plugin times each notebook from its first cell to its last, reads the kernel's
  peak resident memory (``VmHWM`` in ``/proc/<pid>/status`` on Linux; sampled RSS elsewhere),
  prints a table of both at the end of the run, and fails the notebook's last cell when it goes
  over budget. The budget is what a Binder session on 2 CPU cores can afford. Memory is
  enforced everywhere; wall time depends on the machine and on what else it is doing, so it is
  enforced only in CI (``CI`` set, as ``.ci/run`` has it), on a machine of known size with
  nothing else running, and elsewhere only reported.
* **JupyterLab.** ``tests/test_lab.py`` records a line per notebook it opened in a browser; the
  run's summary prints them with the Lab tests' total time (start and shutdown included).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
NOTEBOOK_SECONDS_BUDGET = 180.0  # wall time from the first cell's start to the last cell's end
NOTEBOOK_MEMORY_BUDGET_MB = 1536.0  # peak resident memory of the notebook's kernel


@dataclass
class NotebookRun:
    """What one notebook cost: filled in cell by cell."""

    name: str
    cells: int = 0
    start: float | None = None
    end: float | None = None
    peak_mb: float = 0.0
    failed_cells: int = 0
    kernel_folder: str = ""  # the kernel's working directory, read from /proc (Linux)

    @property
    def seconds(self) -> float:
        if self.start is None or self.end is None:
            return 0.0
        return self.end - self.start

    def problems(self) -> list[str]:
        """Over budget, or run inside the repository: empty when the notebook passes."""
        problems = []
        if self.kernel_folder and Path(self.kernel_folder).is_relative_to(ROOT):
            problems.append(f"its kernel ran inside the repository ({self.kernel_folder})")
        if self.seconds > NOTEBOOK_SECONDS_BUDGET and os.environ.get("CI"):
            problems.append(f"ran {self.seconds:.0f} s (budget {NOTEBOOK_SECONDS_BUDGET:.0f} s)")
        if self.peak_mb > NOTEBOOK_MEMORY_BUDGET_MB:
            problems.append(
                f"peaked at {self.peak_mb:.0f} MB (budget {NOTEBOOK_MEMORY_BUDGET_MB:.0f} MB)"
            )
        return problems


_runs: dict[str, NotebookRun] = {}
_last_cell_of: dict[str, str] = {}  # notebook path -> nodeid of its last collected cell


def _is_notebook_cell(item: pytest.Item) -> bool:
    return str(getattr(item, "path", "")).endswith(".ipynb")


def _kernel_pid(item: pytest.Item) -> int | None:
    kernel = getattr(item.parent, "kernel", None)
    manager = getattr(kernel, "km", None)
    provisioner = getattr(manager, "provisioner", None)
    process = getattr(provisioner, "process", None)
    return getattr(process, "pid", None)


def _kernel_folder(item: pytest.Item) -> str:
    """The working directory of the kernel running ``item``'s notebook ("" if unknown)."""
    pid = _kernel_pid(item)
    try:
        return os.readlink(f"/proc/{pid}/cwd") if pid is not None else ""
    except OSError:
        return ""


def _kernel_peak_mb(item: pytest.Item) -> float:
    """Peak resident memory of the kernel running ``item``'s notebook, in MB (0 if unknown)."""
    pid = _kernel_pid(item)
    if pid is None:
        return 0.0
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except Exception:
        return 0.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _is_notebook_cell(item):
            _last_cell_of[str(item.path)] = item.nodeid


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    if not _is_notebook_cell(item):
        yield
        return
    run = _runs.setdefault(str(item.path), NotebookRun(name=item.path.name))
    now = time.perf_counter()
    if run.start is None:
        run.start = now
        run.kernel_folder = _kernel_folder(item)
    try:
        yield
    finally:
        run.end = time.perf_counter()
        run.cells += 1
        run.peak_mb = max(run.peak_mb, _kernel_peak_mb(item))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    if call.when != "call" or not _is_notebook_cell(item):
        return
    report = outcome.get_result()
    run = _runs.get(str(item.path))
    if run is None:
        return
    if report.failed:
        run.failed_cells += 1
    if item.nodeid == _last_cell_of.get(str(item.path)) and report.passed:
        problems = run.problems()
        if problems:
            report.outcome = "failed"
            report.longrepr = f"{run.name}: " + "; ".join(problems)


def pytest_terminal_summary(terminalreporter) -> None:
    _lab_summary(terminalreporter)
    if not _runs:
        return
    write = terminalreporter.write_line
    terminalreporter.section("notebook budget (wall time, kernel peak memory)")
    write(f"{'notebook':<28} {'cells':>5} {'seconds':>8} {'peak MB':>8}  status")
    for run in sorted(_runs.values(), key=lambda r: r.name):
        if run.failed_cells:
            status = f"FAILED ({run.failed_cells} cell(s))"
        else:
            status = "; ".join(run.problems()) or "ok"
            if run.seconds > NOTEBOOK_SECONDS_BUDGET and not os.environ.get("CI"):
                status += " (slower than the budget here; time is enforced in CI only)"
        write(f"{run.name:<28} {run.cells:>5} {run.seconds:>8.1f} {run.peak_mb:>8.0f}  {status}")
    write(
        f"budget per notebook: {NOTEBOOK_SECONDS_BUDGET:.0f} s and "
        f"{NOTEBOOK_MEMORY_BUDGET_MB:.0f} MB (a Binder session on 2 CPU cores); "
        "each kernel ran in an empty folder outside the repository"
    )


def _lab_summary(terminalreporter) -> None:
    """The notebooks tests/test_lab.py opened in JupyterLab, and the Lab tests' total time."""
    reports = [
        report
        for reports in terminalreporter.stats.values()
        for report in reports
        if isinstance(report, pytest.TestReport) and "lab" in report.keywords
    ]
    lines = [
        value
        for report in reports
        if report.when == "call"
        for name, value in report.user_properties
        if name == "lab"
    ]
    if not lines:
        return
    terminalreporter.section("JupyterLab in a browser (tests/test_lab.py)")
    for line in lines:
        terminalreporter.write_line(line)
    seconds = sum(report.duration for report in reports)  # set-up, call and teardown
    terminalreporter.write_line(
        f"Lab tests in all: {seconds:.0f} s, Lab start and shutdown included"
    )


_hypothesis_home: str | None = None
_kernel_folders: list[str] = []  # the empty folders the notebooks' kernels ran in


def _start_kernels_outside_the_repository() -> None:
    """Make nbval start each notebook's kernel in a new empty temporary folder.

    nbval starts a kernel with ``RunningKernel(name, cwd=<the notebook's folder>, ...)``; the
    subclass below replaces that folder. If nbval stops calling it so, this fails loudly here
    rather than letting the notebooks run inside the repository unnoticed.
    """
    import nbval.plugin

    original = getattr(nbval.plugin, "RunningKernel", None)
    if original is None:
        raise pytest.UsageError("nbval.plugin.RunningKernel is gone: update conftest.py")

    class KernelInAnEmptyFolder(original):
        def __init__(self, kernel_name, cwd=None, **kwargs):
            folder = tempfile.mkdtemp(prefix="notebook-alone-")
            _kernel_folders.append(folder)
            super().__init__(kernel_name, cwd=folder, **kwargs)

    nbval.plugin.RunningKernel = KernelInAnEmptyFolder


def pytest_configure(config: pytest.Config) -> None:
    """Hypothesis writes under ./.hypothesis by default, already while tests are collected; give
    it a temporary folder instead (this runs before collection), removed when the run ends.
    Notebook kernels start outside the repository."""
    global _hypothesis_home
    from hypothesis.configuration import set_hypothesis_home_dir

    _hypothesis_home = tempfile.mkdtemp(prefix="hypothesis-")
    set_hypothesis_home_dir(_hypothesis_home)
    if config.pluginmanager.hasplugin("nbval"):
        _start_kernels_outside_the_repository()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _hypothesis_home is not None:
        shutil.rmtree(_hypothesis_home, ignore_errors=True)
    for folder in _kernel_folders:
        shutil.rmtree(folder, ignore_errors=True)
