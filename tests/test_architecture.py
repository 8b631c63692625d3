"""The import rules that keep the layers apart (pyproject's [tool.importlinter] contracts), and migrations
that carry their data frozen."""

import ast
import subprocess

from portal.config import PROJECT_ROOT
from tests.conftest import VENV_BIN


def test_every_import_contract_holds():
    checked = subprocess.run(
        [str(VENV_BIN / "lint-imports"), "--no-cache"], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout[-4000:] + checked.stderr[-2000:]
    assert "0 broken" in checked.stdout


def test_migrations_import_nothing_of_the_portal():
    """A migration's result must not change when the code it ran with changes: its data is frozen in it."""
    for migration in sorted((PROJECT_ROOT / "alembic" / "versions").glob("*.py")):
        tree = ast.parse(migration.read_text())
        imported = [
            node.module if isinstance(node, ast.ImportFrom) else alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        ]
        assert not [name for name in imported if name and name.startswith("portal")], migration.name
