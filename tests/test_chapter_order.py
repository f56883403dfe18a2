"""The package reads in course order: a module imports only modules of its own or an earlier
chapter, the chapters read from the table in ``companion/__init__.py``'s docstring."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import companion

PACKAGE = Path(companion.__file__).parent

# Known violations, each (importer, imported): none left; add one only with an issue to move it.
ALLOWED: set[tuple[str, str]] = set()


def chapters() -> dict[str, int]:
    """module name -> its chapter: the first chapter named in its row's notebook column."""
    table = {}
    for line in (companion.__doc__ or "").splitlines():
        row = re.fullmatch(r"\s{4}(\w+)\s.*\((\d\d)[^)]*\)\s*", line)
        if row:
            table[row[1]] = int(row[2])
    return table


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
    )


def imported_modules(source: str) -> set[str]:
    """The companion modules a module's source imports, at module level or inside functions,
    leaving out imports under ``if TYPE_CHECKING:`` (they never run)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking(node):
            for child in node.orelse:  # the else branch does run
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("companion."):
                    found.add(alias.name.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("companion."):
                found.add(node.module.split(".")[1])
            elif node.module == "companion":
                found.update(alias.name for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def test_every_module_is_in_the_table():
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert modules == set(chapters()), "add the module to companion/__init__.py's table"


def test_modules_import_only_their_own_or_earlier_chapters():
    table = chapters()
    backwards = []
    for name, chapter in table.items():
        source = (PACKAGE / f"{name}.py").read_text(encoding="utf-8")
        for other in sorted(imported_modules(source)):
            if other in table and table[other] > chapter and (name, other) not in ALLOWED:
                backwards.append(f"{name} (ch. {chapter}) imports {other} (ch. {table[other]})")
    assert not backwards, "; ".join(backwards)


def test_the_allowed_violations_still_exist():
    """An entry of ALLOWED that no longer happens must be removed, so the list stays honest."""
    table = chapters()
    for name, other in ALLOWED:
        source = (PACKAGE / f"{name}.py").read_text(encoding="utf-8")
        assert other in imported_modules(source) and table[other] > table[name], (name, other)


def test_imports_are_found_everywhere_but_under_type_checking():
    source = (
        "import companion.bpe\nfrom companion.model import GPT\nfrom companion import data\n"
        "if TYPE_CHECKING:\n    from companion.chat import chat\nelse:\n    import companion.world\n"
        "def f():\n    from companion.ppo import train_ppo\n"
    )
    assert imported_modules(source) == {"bpe", "model", "data", "world", "ppo"}
    table = chapters()
    assert table["attention"] == 2 and table["generation"] == 3 and table["kv_cache"] == 7
