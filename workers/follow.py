"""Follow a Celery job from a client: a progress bar over its PROGRESS state, then its result."""

from __future__ import annotations

import time
from typing import Any

from celery.result import AsyncResult
from tqdm import tqdm


def follow(task: AsyncResult, desc: str, unit: str = "item", timeout_s: float | None = None) -> dict[str, Any]:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with tqdm(desc=desc, unit=unit) as bar:
        while not task.ready():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {task.id} ({desc}) did not finish within {timeout_s:.0f} s")
            info = task.info if isinstance(task.info, dict) else {}
            if info.get("total"):
                bar.total = int(info["total"])
            bar.n = int(info.get("done", 0))
            post = {"stage": str(info.get("stage", task.state))}
            if "loss" in info:
                post["loss"] = f"{float(info['loss']):.3f}"
            bar.set_postfix(post, refresh=True)
            time.sleep(0.5)
    return dict(task.get())
