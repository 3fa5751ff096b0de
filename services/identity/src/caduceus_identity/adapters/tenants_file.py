"""Reading the tenants file (CADUCEUS_TENANTS_FILE, default `<state_dir>/tenants.yaml`)."""

from __future__ import annotations

from pathlib import Path

from caduceus_identity.domain import Directory, DirectoryError, parse_directory


def load_directory(path: Path) -> Directory:
    """Read and check a tenants file; DirectoryError names the file and what to fix."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DirectoryError(
            f"tenants file {path} does not exist: create it (the embedded stack copies a demo one on "
            "`caduceus up`) or point CADUCEUS_TENANTS_FILE at yours"
        ) from None
    except OSError as exc:
        raise DirectoryError(f"cannot read tenants file {path}: {exc.strerror}; check its permissions") from None
    return parse_directory(text, str(path))
