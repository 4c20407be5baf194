"""The search stack the job tests share (one per module): real embedding and search services on the
trained toy CLIP, and the environment a worker needs to reach them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from registry.families.clip import ClipModel
from tests.conftest import search_stack
from tests.workers.helpers import MODEL


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, toy_clip: tuple[ClipModel, dict[str, float]]
) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("reindex-home")
    with search_stack(home, toy_clip[0], MODEL) as (store, emb_url, search_url):
        env = {"VLMOPS_HOME": str(home), "VLMOPS_EMBEDDING__MAX_LATENCY_MS": "10000"}
        env |= {"VLMOPS_WORKER__SEARCH_URL": search_url, "VLMOPS_WORKER__EMBEDDING_URL": emb_url}
        # reindexes to versions that are not production: no reconciler to bring them back meanwhile
        env |= {"VLMOPS_WORKER__PAGE_SIZE": "8", "VLMOPS_WORKER__RECONCILE": "false"}
        yield {"home": home, "store": store, "env": env, "search": search_url}
