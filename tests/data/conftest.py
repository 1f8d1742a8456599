"""Fixtures for the data tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_fixtures import write_mixed_folder


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    root = tmp_path / "mixed"
    write_mixed_folder(root)
    return root
