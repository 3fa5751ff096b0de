"""The identity schema as the release before migrations (7f37293) created it.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATEMENTS = [
    """CREATE TABLE service_accounts (
    account_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL, platforms TEXT NOT NULL,
    key_hash TEXT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT)""",
    "CREATE UNIQUE INDEX service_account_names ON service_accounts (tenant, name) WHERE revoked_at IS NULL",
    """CREATE TABLE platform_links (
    tenant TEXT NOT NULL, platform TEXT NOT NULL, platform_user TEXT NOT NULL, user TEXT NOT NULL,
    linked_by TEXT NOT NULL, linked_at TEXT NOT NULL, PRIMARY KEY (tenant, platform, platform_user))""",
    """CREATE TABLE pairing_codes (
    tenant TEXT NOT NULL, platform TEXT NOT NULL, platform_user TEXT NOT NULL, code_hash TEXT NOT NULL,
    salt BLOB NOT NULL, created_at TEXT NOT NULL, expires_at TEXT NOT NULL,
    PRIMARY KEY (tenant, platform, platform_user))""",
    "CREATE TABLE pairing_failures (tenant TEXT NOT NULL, platform TEXT NOT NULL, failed_at TEXT NOT NULL)",
    """CREATE TABLE identity_changes (
    event_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, action TEXT NOT NULL, actor TEXT NOT NULL,
    subject TEXT NOT NULL, detail TEXT NOT NULL, occurred_at TEXT NOT NULL, published INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX identity_changes_unpublished ON identity_changes (published, occurred_at)",
]


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in STATEMENTS:
        if postgres:  # `user` is a reserved word there, and binary is BYTEA; SQLite files keep their schema as is
            statement = statement.replace(" user TEXT", ' "user" TEXT').replace("BLOB", "BYTEA")
        op.execute(statement)
