"""The tenants file as the approval service reads it: reloaded when it changes, through identity's Directory."""

from __future__ import annotations

from pathlib import Path

from caduceus_identity.adapters.tenants_file import load_directory
from caduceus_identity.domain import Directory, DirectoryError


class TenantDirectory:
    """Who is in which tenant with which roles; re-read whenever the file's modification time changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: float | None = None
        self._directory: Directory | None = None

    def current(self) -> Directory:
        """The directory; DirectoryError when the file is missing or wrong (and no good version was read)."""
        try:
            stamp = self.path.stat().st_mtime
        except OSError:
            stamp = None
        if self._directory is None or stamp != self._stamp:
            try:
                self._directory = load_directory(self.path)
                self._stamp = stamp
            except DirectoryError:
                if self._directory is None:
                    raise
        return self._directory

    def users(self, tenant: str) -> dict[str, tuple[str, ...]] | None:
        """User name -> roles for a tenant, or None when the tenant is unknown."""
        known = self.current().tenants.get(tenant)
        if known is None:
            return None
        return {name: user.roles for name, user in known.users.items()}

    def is_member(self, tenant: str, user: str) -> bool:
        users = self.users(tenant)
        return users is not None and user in users
