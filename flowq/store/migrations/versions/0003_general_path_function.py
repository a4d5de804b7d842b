"""flowq_general_path(): how a hot-path statement hands a case back to the general path

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# A single-statement task end (flowq.store.statements.END_FAST) calls this when what it changed
# needs a decision only Python makes (a successor to skip, an execution to finish): the error
# undoes the whole statement, and the coordinator runs the transactional end instead.
CREATE = """
CREATE OR REPLACE FUNCTION flowq_general_path(reason text) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'FQ001', MESSAGE = 'flowq: general path needed: ' || reason;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS flowq_general_path(text)")
