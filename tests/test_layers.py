"""The layer contract in pyproject.toml is part of the suite: an import that runs back up fails the tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_the_import_contracts_are_kept() -> None:
    result = subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _readme_tree() -> dict[str, set[str]]:
    """The Architecture section's tree: package (``""`` for the ground floor) -> its module files."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- architecture-tree:", 1)[1].split("```", 2)[1]
    tree: dict[str, set[str]] = {}
    package: str | None = None
    for line in block.splitlines()[2:]:
        words = line.split()
        if not words:
            continue
        if line.startswith("  ") and not line.startswith("   "):
            package = "" if line.strip().startswith("the ground floor") else words[0].rstrip("/")
            tree.setdefault(package, set())
        elif package is not None and all(word.endswith(".py") for word in words):
            tree[package].update(words)
    return tree


def _package_tree() -> dict[str, set[str]]:
    package_dir = ROOT / "worker"
    tree = {"": {path.name for path in package_dir.glob("*.py") if path.name != "__init__.py"}}
    for sub in sorted(path for path in package_dir.iterdir() if (path / "__init__.py").is_file()):
        tree[sub.name] = {path.name for path in sub.glob("*.py") if path.name != "__init__.py"}
    return tree


def test_the_readme_architecture_tree_is_the_package_tree() -> None:
    assert _readme_tree() == _package_tree()
