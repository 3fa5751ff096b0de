"""Reading the tenants file (CADUCEUS_TENANTS_FILE, default `<state_dir>/tenants.yaml`), and noticing edits."""

from __future__ import annotations

import logging
from pathlib import Path

from caduceus_directory.model import Directory, DirectoryError, DirectoryUnreadable, parse_directory

log = logging.getLogger(__name__)


def load_directory(path: Path) -> Directory:
    """Read and check a tenants file; DirectoryError names the file and what to fix."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DirectoryUnreadable(
            f"tenants file {path} does not exist: create it (the embedded stack copies a demo one on "
            "`caduceus up`) or point CADUCEUS_TENANTS_FILE at yours"
        ) from None
    except OSError as exc:
        raise DirectoryUnreadable(f"cannot read tenants file {path}: {exc.strerror}; check its permissions") from None
    return parse_directory(text, str(path))


class DirectorySource:
    """The current directory: the tenants file as last read, read again whenever the file changes.

    A change that does not parse is logged and ignored (the previous directory stays in force);
    `caduceus tenants apply` checks a file before it replaces this one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._directory = load_directory(path)
        self._seen = self._signature()
        self.rejected: str | None = None

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def __call__(self) -> Directory:
        signature = self._signature()
        if signature != self._seen:
            self._seen = signature
            try:
                self._directory = load_directory(self.path)
                self.rejected = None
                log.info("tenants file %s changed: now %d tenant(s)", self.path, len(self._directory.tenants))
            except DirectoryError as exc:
                self.rejected = str(exc)
                log.error("ignoring the changed tenants file (still using the previous one): %s", exc)
        return self._directory
