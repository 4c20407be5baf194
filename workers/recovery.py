"""Redelivery on the embedded broker.

kombu's SQLAlchemy transport hides a message when a worker takes it and never shows it again, so a
worker killed mid-job would lose that job. The embedded default runs one worker per ``VLMOPS_HOME``;
when it starts, before it consumes anything, every hidden message whose job has not finished belongs
to a dead worker and is made visible again (jobs are idempotent and resume from their checkpoints).
Finished jobs' messages are deleted. Redis redelivers by itself (visibility timeout).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from celery import Celery, states
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

log = logging.getLogger(__name__)


def requeue_orphans(app: Celery) -> int:
    """Make the unfinished jobs of dead workers visible again; returns how many."""
    url = str(app.conf.broker_url)
    if not url.startswith("sqla+"):
        return 0
    engine = create_engine(url.removeprefix("sqla+"))
    try:
        with engine.begin() as conn:
            rows = conn.execute(
                text("SELECT id, payload FROM kombu_message WHERE visible = :hidden"), {"hidden": False}
            )
            requeue, done = [], []
            for message_id, payload in rows.fetchall():
                task_id = _task_id(payload)
                if task_id is None:
                    continue
                state = app.AsyncResult(task_id).state
                (done if state in states.READY_STATES else requeue).append(message_id)
            for message_id in requeue:
                conn.execute(
                    text("UPDATE kombu_message SET visible = :v WHERE id = :id"), {"v": True, "id": message_id}
                )
            for message_id in done:
                conn.execute(text("DELETE FROM kombu_message WHERE id = :id"), {"id": message_id})
    except OperationalError:  # a fresh broker: kombu has not created its tables yet
        return 0
    finally:
        engine.dispose()
    if requeue:
        log.warning("requeued %d job(s) left unfinished by a worker that died", len(requeue))
    return len(requeue)


def _task_id(payload: Any) -> str | None:
    try:
        data = json.loads(payload)
        return str(data["headers"]["id"])
    except (ValueError, KeyError, TypeError):
        return None
