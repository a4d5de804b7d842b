"""Entry point of plain Celery worker processes: ``celery -A bench.plain_worker worker``."""

from bench.plain import app_from_env

app = app_from_env()
