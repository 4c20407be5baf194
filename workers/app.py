"""The Celery app, configured from settings: Redis in production (``VLMOPS_BROKER_URL``), a broker
that needs no server (kombu's SQLAlchemy transport on sqlite under ``VLMOPS_HOME``) by default.

Jobs are acknowledged late and rejected when their worker is lost, one at a time per worker, so a
killed worker's job is redelivered and runs again (every job is idempotent): by Redis after the
visibility timeout, by the embedded broker when the next worker starts (``workers.recovery``; the
embedded broker is for one worker per ``VLMOPS_HOME``).

A job carries the request id of whatever enqueued it (an API call, a CLI command, another job) in its
message headers, and runs with it (``infra.logs``); a job enqueued with none runs with its task id.
The worker logs in ``VLMOPS_LOG_FORMAT`` in place of Celery's own logging setup."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task
from celery.signals import (
    before_task_publish,
    celeryd_after_setup,
    setup_logging,
    task_postrun,
    task_prerun,
    worker_ready,
)
from kombu import Exchange, Queue

from infra.logs import (
    TASK_HEADER,
    configure_logging,
    current_request_id,
    reset_request_id,
    set_request_id,
    valid_request_id,
)
from infra.settings import Settings
from workers import metrics  # noqa: F401  (connects its handlers: the worker's /metrics, the job metrics)

DEFAULT_QUEUE = "celery"
TRAIN_QUEUE = "train"


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings()
    home = settings.ensure_home().resolve()
    broker = settings.broker_url or f"sqla+sqlite:///{home / 'celery-broker.db'}"
    backend = settings.result_backend or (
        broker if broker.startswith("redis") else f"db+sqlite:///{home / 'celery-results.db'}"
    )
    app = Celery("vlmops", broker=broker, backend=backend, include=["workers.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        result_extended=True,
        # jobs that need an accelerator go to their own queue, so GPU workers can take only those;
        # a worker started without -Q consumes both (the embedded default: one worker does all)
        task_queues=tuple(Queue(q, Exchange(q), routing_key=q) for q in (DEFAULT_QUEUE, TRAIN_QUEUE)),
        task_default_queue=DEFAULT_QUEUE,
        task_routes={"vlmops.finetune": {"queue": TRAIN_QUEUE}, "vlmops.evaluate": {"queue": TRAIN_QUEUE}},
    )
    if broker.startswith("redis"):  # redelivery of unacknowledged jobs after this long
        app.conf.broker_transport_options = {"visibility_timeout": settings.worker.visibility_timeout_s}
    from workers.heartbeat import HeartbeatStep

    app.steps["consumer"].add(HeartbeatStep)  # the probes' file (VLMOPS_WORKER__HEARTBEAT_FILE)
    return app


app = make_app()


@celeryd_after_setup.connect
def _recover(sender: str, instance: Any, **_: Any) -> None:
    """Before this worker consumes anything: requeue what a dead worker left behind (embedded broker)."""
    from workers.recovery import requeue_orphans

    requeue_orphans(instance.app)


@worker_ready.connect
def _start_reconciler(sender: Any, **_: Any) -> None:
    """Workers of the default queue keep every collection on its model's production version."""
    from workers.reconcile import reconciler, reconciler_thread

    settings = Settings()
    queues = set(sender.app.amqp.queues.consume_from or {})
    if not settings.worker.reconcile or DEFAULT_QUEUE not in queues:
        return
    thread = reconciler_thread(lambda: reconciler(settings, sender.app), settings.worker.reconcile_interval_s)
    thread.start()  # a daemon thread: it ends with the worker process


@setup_logging.connect
def _logging(loglevel: int | str | None = None, **_: Any) -> None:
    """The worker's logging, in place of Celery's (which would replace the root logger's handlers)."""
    level = loglevel or logging.INFO
    configure_logging(Settings().log_format, "vlmops-worker", level=level, root_level=level)


@before_task_publish.connect
def _carry_request_id(headers: dict[str, Any] | None = None, **_: Any) -> None:
    rid = current_request_id()
    if rid is not None and headers is not None:
        headers.setdefault(TASK_HEADER, rid)


@task_prerun.connect
def _enter_request(task_id: str, task: Task, **_: Any) -> None:
    rid = valid_request_id(task.request.get(TASK_HEADER)) or task_id
    task.request.vlmops_request_token = set_request_id(rid)


@task_postrun.connect
def _leave_request(task: Task, **_: Any) -> None:
    token = getattr(task.request, "vlmops_request_token", None)
    if token is not None:
        reset_request_id(token)
        task.request.vlmops_request_token = None
