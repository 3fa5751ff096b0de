"""The gateway's first schema: conversations and what was said and done in them.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATEMENTS = [
    """CREATE TABLE conversations (
    conversation_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, user TEXT NOT NULL, workspace TEXT NOT NULL,
    channel TEXT NOT NULL, title TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)""",
    "CREATE INDEX conversations_of_person ON conversations (tenant, user, updated_at)",
    """CREATE TABLE conversation_entries (
    entry_id INTEGER PRIMARY KEY AUTOINCREMENT, conversation_id TEXT NOT NULL REFERENCES conversations,
    kind TEXT NOT NULL, body TEXT NOT NULL, at TEXT NOT NULL)""",
    "CREATE INDEX conversation_entries_in_order ON conversation_entries (conversation_id, entry_id)",
]


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in STATEMENTS:
        if postgres:  # `user` is a reserved word there, and a counter is an identity column; SQLite files keep theirs
            statement = (statement.replace(" user TEXT", ' "user" TEXT').replace("(tenant, user,", '(tenant, "user",')
                         .replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"))
        op.execute(statement)
