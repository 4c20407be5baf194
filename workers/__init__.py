"""Celery app and jobs (finetune, reindex, ingest): thin wrappers over library code."""
