"""The job pipelines, each a chain of small stages (reader → mapper → writer) glued by a runner; the
Celery tasks in ``workers.tasks`` are thin wrappers around them."""
