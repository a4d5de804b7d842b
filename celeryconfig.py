"""Celery settings of this deployment: flowq's defaults, then your overrides below.

The defaults (``workers/config.py``) are what flowq relies on: JSON serialisation only,
``task_acks_late``, ``task_reject_on_worker_lost`` and a prefetch of 1. Override with care.
"""

from workers.config import *  # noqa: F403

# Deployment overrides: uncomment and edit.
#
# Worker processes per `flowq worker` when no -c is given:
# worker_concurrency = 8
#
# Messages each worker process reserves ahead; 1 keeps long tasks from starving short ones:
# worker_prefetch_multiplier = 1
#
# Redis broker: seconds before an unacknowledged message is redelivered to another worker.
# Must exceed your longest task (with acks_late, a longer task would run twice):
# broker_transport_options = {"visibility_timeout": 3600}
