"""The tenant directory, tenants.yaml: read by identity (who is admitted, with which roles), approval (who may
answer) and the CLI (`caduceus tenants`). One definition of the file, so they never disagree about it.
"""

from caduceus_directory.model import (
    ADMIN_ROLES,
    DIRECTORY_FORMAT,
    SHARED_CHANNEL_PREFIX,
    TIERS,
    ApprovalMode,
    CustomRole,
    Directory,
    DirectoryError,
    DirectoryUnreadable,
    Issuer,
    Member,
    MemoryScope,
    Problem,
    Tenant,
    User,
    memory_scope,
    parse_directory,
)
from caduceus_directory.source import DirectorySource, load_directory

__all__ = [
    "ADMIN_ROLES", "DIRECTORY_FORMAT", "TIERS", "ApprovalMode", "CustomRole", "Directory", "DirectoryError",
    "DirectorySource", "DirectoryUnreadable", "Issuer", "Member", "MemoryScope", "Problem", "SHARED_CHANNEL_PREFIX",
    "Tenant", "User", "load_directory",
    "memory_scope", "parse_directory",
]
