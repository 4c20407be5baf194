"""The ingest jobs' helper process: one per worker, kept between jobs, started again when it died."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from infra.blobs import content_hash
from infra.images import encode_png
from infra.toyworld import ToyWorld
from infra.uris import UriPolicy
from workers.pipelines.ingest import FileWork, HelperProcess


def test_the_helper_is_kept_between_jobs_and_replaced_when_it_dies(tmp_path: Path) -> None:
    images = [encode_png(s.image) for s in ToyWorld().samples(5)]
    for i, data in enumerate(images):
        (tmp_path / f"{i}.png").write_bytes(data)
    uris = sorted(str(p) for p in tmp_path.iterdir())
    helper = HelperProcess()
    try:
        pids = []
        for _ in range(2):  # two jobs, one helper
            files = FileWork(UriPolicy([str(tmp_path)], []), 1 << 20, str(tmp_path / "blobs"), helper)
            pages = list(files.pages(uris, page_size=2, depth=1))
            files.close()
            assert sorted(k for page in pages for k in page.keys) == sorted(content_hash(d) for d in images)
            pids.append(helper.submit(os.getpid).result())
        assert pids[0] == pids[1] != os.getpid()
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:  # the pool notices the death on its own thread; then a new helper answers
            try:
                new = helper.submit(os.getpid).result()
                if new != pids[0]:
                    break
            except BrokenProcessPool:
                pass
            assert time.monotonic() < deadline, "no new helper"
            time.sleep(0.1)
        files = FileWork(UriPolicy([str(tmp_path)], []), 1 << 20, str(tmp_path / "blobs"), helper)
        assert sum(len(p.keys) for p in files.pages(uris, page_size=2, depth=1)) == len(images)
        files.close()
    finally:
        helper.close()
