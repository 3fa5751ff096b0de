"""The trace id column and its index in every audit database.

7f37293 added a missing `trace_id` with an ad-hoc ALTER TABLE at every start, which made the column but never its
index, so `caduceus audit timeline --trace` scanned the whole table on databases older than the trace id. Whatever
such a database lacks is added here; on one 0001 created, nothing changes.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if "trace_id" not in {column["name"] for column in inspector.get_columns("audit_record")}:
        op.add_column("audit_record", sa.Column("trace_id", sa.String(32)))
    if "ix_audit_record_trace_id" not in {index["name"] for index in inspector.get_indexes("audit_record")}:
        op.create_index("ix_audit_record_trace_id", "audit_record", ["trace_id"])
