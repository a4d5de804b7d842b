"""flowq's Celery defaults; a deployment's `celeryconfig.py` imports and overrides them."""

# Messages are JSON only: no pickle is ever accepted.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# A task is acknowledged after it ran, and redelivered if its worker process dies.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

# flowq records results in its own store; Celery's result backend is not needed per task.
task_ignore_result = True
task_store_errors_even_if_ignored = False

task_default_queue = "flowq"
task_create_missing_queues = True
task_default_priority = 4  # Celery's scale on Redis: 0 is most urgent (flowq priority 5)

# Redis: one list per priority level, consumed most urgent first.
broker_transport_options = {
    "queue_order_strategy": "priority",
    "priority_steps": list(range(10)),
    "sep": ":",
    "visibility_timeout": 3600,
}
broker_connection_retry_on_startup = True

worker_hijack_root_logger = False
worker_send_task_events = False  # Flower switches task events on when it runs
task_send_sent_event = False
enable_utc = True
timezone = "UTC"
