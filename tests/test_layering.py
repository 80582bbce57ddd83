"""Imports point downward only: gateway -> store -> config -> crypto -> protocol (DESIGN.md, "Layout and layering").

protocol/ and crypto/ do no I/O: they import no aiohttp, SQLAlchemy, asyncio or logging framework.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["protocol", "crypto", "config", "store", "gateway"]
IO_MODULES = {"aiohttp", "sqlalchemy", "asyncpg", "aiosqlite", "asyncio", "structlog", "logging", "alembic", "socket"}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def forbidden_for(package: str) -> set[str]:
    higher = set(LAYERS[LAYERS.index(package) + 1 :])
    return higher | IO_MODULES if package in {"protocol", "crypto"} else higher


@pytest.mark.parametrize("package", LAYERS)
def test_imports_point_downward(package: str) -> None:
    offenders = {
        f"{path.relative_to(ROOT)} imports {sorted(bad)}"
        for path in (ROOT / package).rglob("*.py")
        if (bad := imported_roots(path) & forbidden_for(package))
    }
    assert not offenders, offenders


def test_the_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import asyncio\nfrom sqlalchemy import select\nfrom gateway.app import x\n")
    assert imported_roots(sample) & forbidden_for("protocol") == {"asyncio", "sqlalchemy", "gateway"}
