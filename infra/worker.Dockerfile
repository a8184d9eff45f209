# A Prefect process worker that can run the frugalml pipeline (CPU; use a CUDA base image for GPUs).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git make && rm -rf /var/lib/apt/lists/*
WORKDIR /pipeline
COPY pyproject.toml README.md ./
COPY frugalml ./frugalml
COPY tasks ./tasks
COPY flows ./flows
RUN pip install --no-cache-dir -e .
COPY . .
USER 1000
