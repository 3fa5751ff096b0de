"""The tenants file as the approval service reads it, through caduceus_directory's DirectorySource (re-read on change)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from caduceus_directory import ADMIN_ROLES, DirectorySource


@dataclass(frozen=True)
class TenantPeople:
    """Who is in a tenant for approvals: each listed user's effective roles, and each IdP group's roles."""

    users: dict[str, tuple[str, ...]]
    groups: dict[str, tuple[str, ...]]


class TenantDirectory:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._source: DirectorySource | None = None

    def _current(self):
        """The directory; DirectoryError when the file is missing or wrong and no good version was read."""
        if self._source is None:
            self._source = DirectorySource(self.path)
        return self._source()

    def people(self, tenant: str) -> TenantPeople | None:
        """The tenant's people (roles include every tier below and what custom roles include), or None."""
        known = self._current().tenants.get(tenant)
        if known is None:
            return None
        return TenantPeople(users={name: known.effective_roles(user.roles) for name, user in known.users.items()},
                            groups=dict(known.groups))

    def is_member(self, tenant: str, user: str) -> bool:
        known = self._current().tenants.get(tenant)
        return known is not None and user in known.users

    def is_admin(self, tenant: str, user: str) -> bool:
        """True for a listed user of the tenant whose effective roles include admin or owner."""
        people = self.people(tenant)
        return people is not None and bool(ADMIN_ROLES & set(people.users.get(user, ())))
