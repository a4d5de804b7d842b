# One image for every flowq service (migrate, worker, api, flower); see docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies and the package first, so editing examples does not rebuild this layer.
COPY pyproject.toml README.md ./
COPY flowq ./flowq
COPY workers ./workers
RUN pip install .

# Handler modules (examples.orders:...) and celeryconfig import from /app.
COPY celeryconfig.py ./
COPY examples ./examples
ENV PYTHONPATH=/app

# The named volume mounted at /data/files starts with this ownership.
RUN useradd --create-home --uid 10001 flowq \
    && mkdir -p /data/files \
    && chown flowq:flowq /data/files
USER flowq

CMD ["flowq", "--help"]
