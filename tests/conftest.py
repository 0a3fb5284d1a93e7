"""Shared fixtures. Store-level builders live in ``factories.py``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.factories import open_store

from edgeq_server.store import Store


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "edgeq.db")


@pytest.fixture
def store(db_path: str) -> Iterator[Store]:
    """A Store on a freshly migrated SQLite file (the writer's connection)."""
    s = open_store(db_path)
    yield s
    s.conn.close()
