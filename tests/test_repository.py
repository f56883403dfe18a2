"""The repository's own promises: notebook state, the bootstrap cell, launch links that open each
notebook on Binder and Colab, the book in step with the chapters, matching environment files,
and an import of ``companion`` that does nothing."""

from __future__ import annotations

import ast
import fnmatch
import graphlib
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from companion.notebook import BOOTSTRAP, BRANCH, CHAPTERS, REPOSITORY, launch_line

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))  # one per chapter with exercises
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _code_cells(path: Path) -> list[dict]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [cell for cell in cells if cell["cell_type"] == "code"]


def test_notebooks_are_named_in_course_order():
    """``NN_topic``, NN the chapter's place on the course map (a chapter still to come leaves its
    number free: chapter 7 may exist before chapter 6), in increasing order."""
    from companion.notebook import COURSE_MAP

    stems = [path.stem for path in NOTEBOOKS]
    assert stems[0] == "00_start_here"
    numbers = []
    for stem in stems:
        assert re.fullmatch(r"\d\d_[a-z0-9_]+", stem), f"{stem}: expected NN_topic"
        numbers.append(int(stem[:2]))
    assert numbers == sorted(set(numbers)), f"chapter numbers out of order or repeated: {stems}"
    assert numbers[-1] <= len(COURSE_MAP), "a notebook numbered past the course map"
    assert stems == [stem for stem, _, _ in CHAPTERS], "companion.notebook.CHAPTERS is out of date"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path: Path):
    """Notebooks are committed clean: nbval then checks that every cell runs, and the notebook's
    own asserts check its claims. Clear outputs with
    ``jupyter nbconvert --clear-output --inplace notebooks/*.ipynb``."""
    for index, cell in enumerate(_code_cells(path)):
        assert cell["outputs"] == [], f"{path.name}: code cell {index} has stored outputs"
        assert cell["execution_count"] is None, f"{path.name}: code cell {index} was executed"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_names_the_python3_kernel(path: Path):
    """JupyterLab, Binder and Colab start the kernel a notebook names; without one, Lab asks."""
    metadata = json.loads(path.read_text(encoding="utf-8"))["metadata"]
    assert metadata.get("kernelspec", {}).get("name") == "python3", (
        f"{path.name}: no python3 kernel"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_starts_with_the_bootstrap_cell(path: Path):
    assert "".join(_code_cells(path)[0]["source"]) == BOOTSTRAP


def _first_markdown(path: Path) -> str:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "".join(next(c for c in cells if c["cell_type"] == "markdown")["source"])


GITHUB = urlparse(REPOSITORY).path.strip("/")  # "owner/name", the one configured repository


def _check_launch_links(text: str, notebook: str) -> None:
    """``text`` links to ``notebook`` (e.g. "notebooks/01_tokenization.ipynb") exactly once on
    Binder and once on Colab, both in the configured repository."""
    links = [urlparse(u) for u in re.findall(r"\]\((https://[^)\s]+)\)", text)]
    links = [u for u in links if not u.path.endswith((".svg", ".png"))]  # badge images
    binder = [u for u in links if u.netloc == "mybinder.org"]
    colab = [u for u in links if u.netloc == "colab.research.google.com"]
    assert len(binder) == 1 and len(colab) == 1, f"expected one Binder and one Colab link: {links}"
    assert re.fullmatch(rf"/v2/gh/{GITHUB}/[\w.-]+", binder[0].path), binder[0].geturl()
    assert parse_qs(binder[0].query)["urlpath"] == [f"lab/tree/{notebook}"], binder[0].geturl()
    assert re.fullmatch(rf"/github/{GITHUB}/blob/[\w.-]+/{notebook}", colab[0].path), colab[
        0
    ].geturl()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_opens_itself_on_binder_and_colab(path: Path):
    """The line under each notebook's title links to that notebook on Binder and on Colab.
    Add it with ``companion.notebook.launch_line(stem)``."""
    text = _first_markdown(path)
    assert launch_line(path.stem) in text, (
        f"{path.name}: put launch_line({path.stem!r}) under the title"
    )
    _check_launch_links(text, f"notebooks/{path.name}")


def test_readme_launches_the_start_page_from_the_repository():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"git clone {REPOSITORY}.git" in readme
    badges = "\n".join(
        line for line in readme.splitlines() if "mybinder.org/v2" in line or "colab-badge" in line
    )
    _check_launch_links(badges, "notebooks/00_start_here.ipynb")


def test_book_launches_from_the_repository():
    """The book's launch buttons are built from the same address and branch as the notebooks'."""
    config = yaml.safe_load((ROOT / "book" / "_config.yml").read_text(encoding="utf-8"))
    assert config["repository"] == {"url": REPOSITORY, "branch": BRANCH}
    buttons = config["launch_buttons"]
    assert buttons["binderhub_url"] == "https://mybinder.org"
    assert buttons["colab_url"] == "https://colab.research.google.com"


def test_readme_lists_every_chapter():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for stem, _, _ in CHAPTERS:
        assert f"{stem}.ipynb" in readme, f"README.md's chapter table is missing {stem}"


def test_book_lists_every_chapter_in_order():
    """book/_toc.yml, companion.notebook.CHAPTERS and notebooks/ name the same chapters in the
    same order (with test_notebooks_are_named_in_course_order), the start page as the root."""
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text(encoding="utf-8"))
    assert toc["root"] == "notebooks/00_start_here"
    entries = toc.get("chapters", [])
    pages = [toc["root"]] + [e["file"] for e in entries if e["file"].startswith("notebooks/")]
    assert pages == [f"notebooks/{stem}" for stem, _, _ in CHAPTERS], "book/_toc.yml is out of date"
    assert pages == [f"notebooks/{path.stem}" for path in NOTEBOOKS]


def test_book_shows_the_solutions_and_the_teachers_guide():
    """Each chapter's solutions notebook is a page under that chapter; the teacher's guide is a
    page of its own, after the chapters; every page the toc names exists."""
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text(encoding="utf-8"))
    entries = toc["chapters"]
    under = {e["file"]: [s["file"] for s in e.get("sections", [])] for e in entries}
    for path in SOLUTIONS:
        chapter = "notebooks/" + path.stem.removesuffix("_solutions")
        assert under.get(chapter) == [f"solutions/{path.stem}"], f"{path.name}: not in the toc"
    assert entries[-1]["file"] == "TEACHING"
    for page in [toc["root"], *under, *(s for sections in under.values() for s in sections)]:
        assert any((ROOT / f"{page}{suffix}").exists() for suffix in (".ipynb", ".md")), page


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solutions_are_stored_clean_and_start_with_the_bootstrap_cell(path: Path):
    """Like the chapters: no outputs, the python3 kernel, and the cell that installs the package
    on Colab first, so a solutions notebook opened alone runs."""
    test_notebook_is_stored_without_outputs(path)
    test_notebook_names_the_python3_kernel(path)
    test_notebook_starts_with_the_bootstrap_cell(path)


def test_package_docstring_lists_every_module():
    """companion/__init__.py's docstring is the package's table of contents."""
    import companion

    modules = {path.stem for path in (ROOT / "companion").glob("*.py")} - {"__init__"}
    listed = set(re.findall(r"^    (\w+)\s", companion.__doc__, flags=re.MULTILINE))
    assert modules <= listed, f"add to companion/__init__.py: {sorted(modules - listed)}"
    assert listed <= modules, f"no such module: {sorted(listed - modules)}"


def _requirement_name(requirement: str) -> str:
    name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
    return {"pytorch": "torch"}.get(name.lower(), name.lower())


def test_environment_yml_matches_pyproject():
    project = PYPROJECT["project"]
    environment = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    conda, pip = [], []
    for entry in environment["dependencies"]:
        if isinstance(entry, dict):
            pip.extend(entry["pip"])
        elif _requirement_name(entry) not in {"python", "pip"}:
            conda.append(entry)
    assert "-e ." in pip, "environment.yml must install the package itself with pip: -e ."
    from_environment = {
        _requirement_name(r): re.sub(r"^[A-Za-z0-9_.-]+", "", r).strip()
        for r in conda + [r for r in pip if r != "-e ."]
    }
    from_pyproject = {
        _requirement_name(r): re.sub(r"^[A-Za-z0-9_.-]+", "", r).strip()
        for r in project["dependencies"] + project["optional-dependencies"]["notebooks"]
    }
    assert from_environment == from_pyproject


def test_notebooks_import_only_what_binder_installs():
    """Binder installs environment.yml: the core dependencies and the ``notebooks`` extra."""
    project = PYPROJECT["project"]
    installed = {
        _requirement_name(r).replace("-", "_")
        for r in project["dependencies"] + project["optional-dependencies"]["notebooks"]
    }
    installed |= {"companion", "IPython", "torch"} | set(sys.stdlib_module_names)
    for path in NOTEBOOKS:
        for cell in _code_cells(path):
            for module in re.findall(
                r"^\s*(?:import|from) (\w+)", "".join(cell["source"]), flags=re.MULTILINE
            ):
                assert module in installed, (
                    f"{path.name} imports {module}, which environment.yml does not install: add it "
                    "to the notebooks extra in pyproject.toml and to environment.yml"
                )


def test_package_data_ships_every_asset():
    """Colab installs the package, not the repository: every asset must be in the wheel."""
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["companion"]
    for path in (ROOT / "companion" / "assets").rglob("*"):
        if path.is_file():
            relative = path.relative_to(ROOT / "companion").as_posix()
            assert any(
                fnmatch.fnmatch(relative, p) and relative.count("/") == p.count("/")
                for p in patterns
            ), f"pyproject.toml's package-data misses {relative}"


def test_torch_has_no_upper_bound():
    """Colab ships torch: an upper bound would force a multi-GB reinstall there."""
    project = PYPROJECT["project"]
    (torch,) = [r for r in project["dependencies"] if _requirement_name(r) == "torch"]
    assert "<" not in torch and "==" not in torch


IMPORT_AUDIT = r"""
import importlib, pkgutil, random, sys
import numpy, torch, regex, tiktoken, safetensors, tqdm, matplotlib, ipywidgets  # third parties

torch_state, numpy_state, python_state = (
    torch.random.get_rng_state(), numpy.random.get_state()[1].copy(), random.getstate())
threads, default_dtype = torch.get_num_threads(), torch.get_default_dtype()
events = []
def audit(event, args):
    if event == "socket.connect" or event.startswith("urllib"):
        events.append((event, str(args)))
    if event == "open" and args[0] is not None and not str(args[0]).endswith((".py", ".pyc", ".so")):
        events.append((event, str(args[0])))
sys.addaudithook(audit)
import companion
modules = [m.name for m in pkgutil.walk_packages(companion.__path__, "companion.")]
for name in modules:
    importlib.import_module(name)
assert events == [], f"importing companion did I/O: {events}"
assert torch.equal(torch_state, torch.random.get_rng_state()), "torch's RNG changed"
assert (numpy_state == numpy.random.get_state()[1]).all(), "numpy's RNG changed"
assert python_state == random.getstate(), "Python's RNG changed"
assert threads == torch.get_num_threads() and default_dtype == torch.get_default_dtype()
print(len(modules))
"""


def test_importing_companion_does_nothing():
    """No I/O, no network, no change to any random generator or torch setting."""
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_AUDIT], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 2, "expected to import every companion module"


def _companion_imports(path: Path) -> set[str]:
    """The companion modules ``path`` imports anywhere: at the top, inside functions and under
    ``if TYPE_CHECKING:`` alike."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("companion."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "companion":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("companion.")}
    return found


def test_the_package_imports_run_one_way():
    """No import cycle between companion's modules, counting every import statement."""
    graph = {p.stem: _companion_imports(p) for p in (ROOT / "companion").glob("*.py")}
    graph = {module: imports - {module} for module, imports in graph.items()}
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle
    assert set(order) >= set(graph)
    assert "checkpoints" not in graph["optimizer"] and "pretraining" not in graph["checkpoints"]


def test_imports_inside_functions_and_type_checking_count(tmp_path):
    """The check above would see the cycle the package once dodged this way."""
    module = tmp_path / "optimizer.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from companion.pretraining import TrainConfig\n"
        "def f():\n    import companion.checkpoints\n    from companion import data\n"
    )
    assert _companion_imports(module) == {"pretraining", "checkpoints", "data"}
    graph = {"optimizer": {"pretraining"}, "pretraining": {"optimizer"}}
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(graph).static_order())
