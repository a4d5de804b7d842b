"""The state tables: definitions, executions, task runs and the append-only history."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData()

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)

definition_bodies = sa.Table(
    "flowq_definition_bodies",
    metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("body", JSON, nullable=False),
    sa.Column("created_at", TS, nullable=False),
)

definitions = sa.Table(
    "flowq_definitions",
    metadata,
    sa.Column("workflow_id", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("name", sa.Text, nullable=True),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)

executions = sa.Table(
    "flowq_executions",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("workflow_id", sa.String(200), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("vars", JSON, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("idempotency_key", sa.String(200), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("tasks_total", sa.Integer, nullable=False),
    sa.Column("tasks_remaining", sa.Integer, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.UniqueConstraint("workflow_id", "idempotency_key", name="uq_flowq_executions_idem"),
    sa.Index("ix_flowq_executions_created", "created_at"),
    sa.Index("ix_flowq_executions_state", "state", "created_at"),
    sa.Index("ix_flowq_executions_workflow", "workflow_id", "created_at"),
)

task_runs = sa.Table(
    "flowq_task_runs",
    metadata,
    sa.Column("execution_id", sa.String(36), primary_key=True),
    sa.Column("task_id", sa.String(200), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    # dependency counters: how many upstream tasks are not yet terminal, and how they ended
    sa.Column("deps_total", sa.Integer, nullable=False),
    sa.Column("deps_remaining", sa.Integer, nullable=False),
    sa.Column("deps_succeeded", sa.Integer, nullable=False, default=0),
    sa.Column("deps_failed", sa.Integer, nullable=False, default=0),
    sa.Column("deps_skipped", sa.Integer, nullable=False, default=0),
    sa.Column("result", JSON, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("celery_id", sa.String(64), nullable=True),
    sa.Column("worker", sa.String(200), nullable=True),
    sa.Column("queued_at", TS, nullable=True),
    sa.Column("started_at", TS, nullable=True),
    sa.Column("finished_at", TS, nullable=True),
    sa.Column("updated_at", TS, nullable=False),
    sa.Index("ix_flowq_task_runs_state", "state", "updated_at"),
)

history = sa.Table(
    "flowq_history",
    metadata,
    sa.Column("id", BIGID, primary_key=True, autoincrement=True),
    sa.Column("execution_id", sa.String(36), nullable=False),
    sa.Column("task_id", sa.String(200), nullable=True),
    sa.Column("from_state", sa.String(20), nullable=True),
    sa.Column("to_state", sa.String(20), nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("at", TS, nullable=False),
    sa.Index("ix_flowq_history_execution", "execution_id", "id"),
)

workers = sa.Table(
    "flowq_workers",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", TS, nullable=False),
    sa.Column("last_seen", TS, nullable=False),
)
