"""A tenants file of two tenants (caduceus_directory.testing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from caduceus_directory.testing import TENANTS


@pytest.fixture()
def tenants_file(tmp_path: Path) -> Path:
    path = tmp_path / "tenants.yaml"
    path.write_text(TENANTS)
    return path
