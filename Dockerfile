# One image for every Python service of the stack: Airflow (api-server, scheduler, dag-processor,
# triggerer), the MLflow server and the Ray head/workers, all with gd_provider installed from this
# checkout with the pinned versions of constraints.txt.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    RAY_USAGE_STATS_ENABLED=0 \
    GX_ANALYTICS_ENABLED=false \
    FEAST_USAGE=False \
    GD_PROVIDER_HOME=/data

RUN apt-get update && apt-get install -y --no-install-recommends curl git libpq5 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/gd
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
# torch: the CPU wheel keeps the image small; a GPU worker image can override TORCH_INDEX.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --extra-index-url "$TORCH_INDEX" -c constraints.txt . "psycopg2-binary>=2.9" "redis>=5"
COPY dags ./dags
COPY example_dags ./example_dags
COPY scripts ./scripts

RUN useradd --create-home --uid 50000 airflow && mkdir -p /data && chown -R airflow /data /opt/gd
USER airflow
