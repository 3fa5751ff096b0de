"""The audit schema as the release before migrations (7f37293) created it with create_all.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_record",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("event_id", sa.String(160), nullable=False, unique=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(512), nullable=False),
        sa.Column("session_id", sa.String(128)),
        sa.Column("call_id", sa.String(160)),
        sa.Column("trace_id", sa.String(32)),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("rejected", sa.Boolean, nullable=False),
        sa.Column("reject_reason", sa.Text),
        sa.UniqueConstraint("tenant", "seq", name="uq_audit_record_tenant_seq"),
    )
    for column in ("call_id", "session_id", "kind", "trace_id"):
        op.create_index(f"ix_audit_record_{column}", "audit_record", [column])
    op.create_table(
        "audit_checkpoint",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("event_id", sa.String(160), nullable=False, unique=True),
        sa.Column("signed", sa.Text, nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published", sa.Boolean, nullable=False),
        sa.UniqueConstraint("tenant", "seq", name="uq_audit_checkpoint_tenant_seq"),
    )
    op.create_table(
        "audit_archive",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("from_seq", sa.Integer, nullable=False),
        sa.Column("through_seq", sa.Integer, nullable=False),
        sa.Column("through_hash", sa.String(64), nullable=False),
        sa.Column("location", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("tenant", "through_seq", name="uq_audit_archive_tenant_seq"),
    )
