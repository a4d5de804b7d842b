"""flowq: workflows (DAGs of typed tasks) on Celery, with durable state."""

from flowq.client import Client
from flowq.context import TaskContext
from flowq.definition import Workflow
from flowq.errors import (
    Conflict,
    FlowqError,
    InvalidTransition,
    NotFound,
    PermanentError,
    TaskError,
    ValidationError,
    WaitTimeout,
)
from flowq.settings import Settings

__version__ = "0.1.0"

__all__ = [
    # producing and watching executions
    "Client",
    "Settings",
    # definitions
    "Workflow",
    # inside tasks
    "TaskContext",
    # errors
    "FlowqError",
    "ValidationError",
    "InvalidTransition",
    "NotFound",
    "Conflict",
    "TaskError",
    "PermanentError",
    "WaitTimeout",
    "__version__",
]
