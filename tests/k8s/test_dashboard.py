"""The Grafana dashboard (``k8s/dashboards/vlmops.json``): it loads, every panel queries something, and
every metric it names is one that vlmops really exports, scraped from running processes (the
embedding service on the toy CLIP, the search service, a captioning service on a tiny BLIP, a Celery
worker on its metrics port) after the requests and jobs that make each series appear: a labelled
series is exported only once it has a value. And the metrics added for it move as the system does."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.images import encode_png, to_base64
from infra.process import ServiceProcess, free_port, wait_http
from infra.toyworld import Split, ToyWorld
from registry.families.clip import ClipModel
from registry.store import RegistryStore
from tests.conftest import REPO, make_settings, search_stack
from tests.k8s.promql import (
    dashboard_names,
    exported,
    metric_names,
    panel_names,
    panels,
    rows,
    sample_names,
    value,
    variable_names,
)
from tests.workers.helpers import start_worker, stop_worker

DASHBOARD = REPO / "k8s" / "dashboards" / "vlmops.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
MODEL = "vlmops-clip"
N_ITEMS = 24
IMAGE = to_base64(encode_png(ToyWorld().sample(3).image))


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]


class TestDashboardModel:
    def test_it_is_a_grafana_dashboard_with_a_datasource_and_a_service_variable(self) -> None:
        dashboard = load()
        assert dashboard["schemaVersion"] >= 39 and dashboard["uid"] and dashboard["title"]
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        service = variables["service"]
        assert service["type"] == "query" and service["datasource"] == DATASOURCE
        assert service["query"]["query"].rstrip(")").endswith(", app_kubernetes_io_name")

    def test_every_panel_has_the_datasource_and_a_query(self) -> None:
        for panel in panels(load()):
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == DATASOURCE, panel["title"]
            assert panel["targets"], panel["title"]
            assert all(t["expr"].strip() and t["datasource"] == DATASOURCE for t in panel["targets"]), panel["title"]
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), panel["title"]

    def test_panel_ids_are_unique_and_panels_do_not_overlap(self) -> None:
        all_panels = list(panels(load()))
        ids = [p["id"] for p in all_panels]
        assert len(ids) == len(set(ids))
        cells: dict[tuple[int, int], str] = {}
        for panel in all_panels:
            box = panel["gridPos"]
            assert box["x"] >= 0 and box["x"] + box["w"] <= 24, panel["title"]
            for x in range(box["x"], box["x"] + box["w"]):
                for y in range(box["y"], box["y"] + box["h"]):
                    assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                    cells[(x, y)] = panel["title"]

    def test_quantiles_are_over_buckets_by_le_and_rates_over_a_range(self) -> None:
        for expr in queries(load()):
            if "histogram_quantile" in expr:
                assert all(name.endswith("_bucket") for name in metric_names(expr)), expr
                assert ", le)" in expr, expr
            if "rate(" in expr or "increase(" in expr:
                assert "[$__rate_interval]" in expr or "[$__range]" in expr, expr


class TestPromqlNames:
    @pytest.mark.parametrize(
        ("expr", "names"),
        [
            ('sum by (app) (rate(a_total{x="y", le=~"0.5"}[5m]))', {"a_total"}),
            ("histogram_quantile(0.99, sum by (svc, le) (rate(b_bucket[$__rate_interval])))", {"b_bucket"}),
            ('label_replace(rate(c_total[1m]), "status", "$1", "code", "(.*)") or d', {"c_total", "d"}),
            ("x / on (pod) group_left (node) y > 1e3 and z == bool 1", {"x", "y", "z"}),
            ("max by (c) (clamp_max(e / f, 1) and g == 1) unless h offset 5m", {"e", "f", "g", "h"}),
            ("max_over_time(i:rate5m[1h:1m]) * 3600", {"i:rate5m"}),
            ('sum without (instance) (j{k="{}"})', {"j"}),
        ],
    )
    def test_names_are_the_identifiers_that_select_series(self, expr: str, names: set[str]) -> None:
        assert metric_names(expr) == names

    def test_a_label_values_variable_names_its_metric(self) -> None:
        assert variable_names('label_values(m_total{namespace=~"$namespace"}, pod)') == {"m_total"}
        assert variable_names("label_values(namespace)") == set()

    def test_type_lines_give_each_family_its_series(self) -> None:
        page = (
            "# TYPE r_total counter\nr_total 1.0\n"
            '# TYPE h histogram\nh_bucket{le="+Inf"} 1.0\nh_sum 1.0\nh_count 1.0\n'
            "# TYPE g gauge\ng 2.0\n"
        )
        names = {"r_total", "r_created", "h_bucket", "h_sum", "h_count", "h_created", "g"}
        assert exported(page) == names and sample_names(page) <= names


@dataclass
class World:
    store: RegistryStore
    embedding: str
    search: str
    v2: str
    worker_before: str
    pages: dict[str, str]  # process -> its /metrics after the traffic


def post(url: str, route: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{url}{route}", json=body, timeout=120)


def exercise(url: str, route: str, item: dict[str, Any]) -> None:
    """One request down each path of a model service: the fast path (answered, refused by validation),
    BentoML's own path, and the gate."""
    assert post(url, route, items=[item]).status_code == 200
    assert post(url, route, items=[]).status_code == 400
    assert post(url, "/models").status_code == 200
    refused = httpx.post(f"{url}{route}", content=b"x", headers={"content-type": "text/plain"}, timeout=60)
    assert refused.status_code == 415


def scrape(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=30).text


def ingest(url: str, collection: str, n: int) -> None:
    assert post(url, "/collections/create", name=collection).status_code == 200
    samples = ToyWorld().samples(n, Split.TEST, n_objects=1, start=5000)
    items = [{"image": to_base64(encode_png(s.image)), "payload": {"label": s.label}} for s in samples]
    resp = post(url, "/ingest", collection=collection, items=items)
    assert resp.status_code == 200, resp.text


def wait_for(url: str, check: Any, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while not check(page := scrape(url)):
        assert time.monotonic() < deadline, f"{url}/metrics never got there:\n{page[:3000]}"
        time.sleep(0.3)
    return page


def run_jobs(home: Path, store: RegistryStore, emb: str, search: str) -> tuple[str, str, str]:
    """A worker with its metrics port: a reindex of "dash", an ingest job, an ingest job that fails.
    Returns (v2, its /metrics before the jobs, after them)."""
    from workers.app import make_app

    folder = home / "images"
    folder.mkdir()
    for i, s in enumerate(ToyWorld().samples(4, Split.VAL, n_objects=1)):
        (folder / f"{i}.png").write_bytes(encode_png(s.image))
    port = free_port()
    env = {"VLMOPS_HOME": str(home), "VLMOPS_WORKER__SEARCH_URL": search, "VLMOPS_WORKER__EMBEDDING_URL": emb}
    env |= {"VLMOPS_WORKER__RECONCILE": "false", "VLMOPS_WORKER__PAGE_SIZE": "8"}
    # the reindex through the embedding service (a CPU worker pool's set-up), so the service pins its version
    env["VLMOPS_WORKER__EMBED"] = "service"
    env |= {"VLMOPS_WORKER__METRICS_PORT": str(port), "VLMOPS_SEARCH__INGEST_URI_PREFIXES": json.dumps([str(folder)])}
    v2 = store.register(MODEL, ClipModel.from_pretrained("vlmops-toy-clip", seed=7)).version
    app = make_app(make_settings(home))  # the embedded broker under home, as the worker's
    worker = start_worker(env, home / "worker.log")
    metrics = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{metrics}/metrics", 120, worker)
        before = scrape(metrics)
        assert app.send_task("vlmops.reindex", args=["dash", v2]).get(timeout=240)["count"] == N_ITEMS
        uris = sorted(str(p) for p in folder.iterdir())
        assert app.send_task("vlmops.ingest", args=["bulk", uris]).get(timeout=120)["count"] == 4
        with pytest.raises(Exception, match="nothing readable"):
            app.send_task("vlmops.ingest", args=["bulk", [str(home / "elsewhere.png")]]).get(timeout=120)
        after = scrape(metrics)
    finally:
        stop_worker(worker)
        app.close()
    return v2, before, after


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, toy_clip: tuple[ClipModel, dict[str, float]]) -> Iterator[World]:
    home = tmp_path_factory.mktemp("dashboard-home")
    # one pinned version kept besides production, and production re-resolved quickly: both move the gauge
    env = {"VLMOPS_EMBEDDING__VERSION_CACHE_SIZE": "1", "VLMOPS_EMBEDDING__REFRESH_INTERVAL_S": "0.5"}
    with search_stack(home, toy_clip[0], MODEL, env=env) as (store, emb, search):
        exercise(emb, "/embed_text", {"text": "a red circle"})
        ingest(search, "dash", N_ITEMS)
        assert post(search, "/collections/create", name="bulk").status_code == 200
        assert post(search, "/search", collection="nowhere", text="a star").status_code == 404
        # published at version 1 before the reindex, so that the test sees it zeroed after
        wait_for(search, lambda p: value(p, "vlmops_collection_items", collection="dash", version="1") == N_ITEMS)
        v2, before, after = run_jobs(home, store, emb, search)

        def swapped(page: str) -> bool:  # the janitor's next pass after the swap and the bulk ingest
            return (
                value(page, "vlmops_collection_items", collection="dash", version=v2) == N_ITEMS
                and value(page, "vlmops_collection_items", collection="bulk", version="1") == 4
            )

        pages = {"embedding": scrape(emb), "search": wait_for(search, swapped), "worker": after}
        yield World(store, emb, search, v2, before, pages)


@pytest.fixture(scope="module")
def captioning(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The /metrics of a captioning service (tiny BLIP) after one request down each path."""
    from tests.registry.test_hf_families import tiny

    home = tmp_path_factory.mktemp("dashboard-captioning")
    store = RegistryStore.from_settings(make_settings(home))
    name = "tiny-blip-caption"
    store.promote(name, store.register(name, tiny("blip-caption", home / "build")).version)
    env = {"VLMOPS_HOME": str(home), "VLMOPS_CAPTIONING__MODEL_NAME": name}
    with ServiceProcess("captioning", env=env, log_path=home / "service.log") as svc:
        exercise(svc.url, "/caption", {"image": IMAGE})
        return scrape(svc.url)


def loaded(page: str, version: str, stage: str) -> float | None:
    return value(page, "vlmops_model_loaded", model=MODEL, version=version, stage=stage)


@pytest.mark.slow
class TestAgainstRunningProcesses:
    def test_every_metric_the_dashboard_queries_is_exported(self, world: World, captioning: str) -> None:
        everything = set().union(*(exported(page) for page in [*world.pages.values(), captioning]))
        assert dashboard_names(load()) - everything == set()

    def test_a_misspelt_metric_fails_the_check(self, world: World) -> None:
        everything = set().union(*(exported(page) for page in world.pages.values()))
        broken = copy.deepcopy(load())
        target = next(p for p in panels(broken) if p["title"] == "Queue wait p50 / p99")["targets"][0]
        target["expr"] = target["expr"].replace("vlmops_queue_seconds_bucket", "vlmops_queue_second_bucket")
        assert dashboard_names(broken) - everything == {"vlmops_queue_second_bucket"}

    @pytest.mark.parametrize(
        ("row", "processes"),
        [("Requests", ["embedding", "captioning"]), ("Model services", ["embedding", "captioning"])]
        + [("Search", ["search"]), ("Jobs", ["worker"])],
    )
    def test_each_row_is_served_by_every_process_it_shows(
        self, world: World, captioning: str, row: str, processes: list[str]
    ) -> None:
        pages = {**world.pages, "captioning": captioning}
        (under,) = [ps for title, ps in rows(load()).items() if title.startswith(row)]
        for process in processes:
            assert panel_names(under) - exported(pages[process]) == set(), process

    def test_type_lines_account_for_every_sample(self, world: World, captioning: str) -> None:
        for page in [*world.pages.values(), captioning]:
            assert sample_names(page) <= exported(page)

    def test_a_reindex_is_timed_and_counted_and_its_progress_reaches_the_total(self, world: World) -> None:
        before, after = world.worker_before, world.pages["worker"]
        timed = {"task": "vlmops.reindex", "outcome": "success"}
        assert value(before, "vlmops_job_seconds_count", **timed) == 0  # there from the start, at 0
        assert value(after, "vlmops_job_seconds_count", **timed) == 1
        assert value(after, "vlmops_job_seconds_sum", **timed) > 0  # type: ignore[operator]
        assert value(after, "vlmops_reindex_items_expected", collection="dash") == N_ITEMS
        assert value(after, "vlmops_reindex_items_done", collection="dash") == N_ITEMS
        assert value(after, "vlmops_reindex_running", collection="dash") == 0
        assert value(after, "vlmops_job_items_total", task="vlmops.reindex", collection="dash") == N_ITEMS
        assert value(after, "vlmops_job_items_total", task="vlmops.ingest", collection="bulk") == 4

    def test_a_failed_job_is_counted_by_task_and_exception(self, world: World) -> None:
        after = world.pages["worker"]
        assert value(after, "vlmops_job_seconds_count", task="vlmops.ingest", outcome="success") == 1
        assert value(after, "vlmops_job_seconds_count", task="vlmops.ingest", outcome="failure") == 1
        assert value(after, "vlmops_jobs_failed_total", task="vlmops.ingest", exception="Unreadable") == 1
        assert value(after, "vlmops_jobs_failed_total", task="vlmops.reindex") is None

    def test_the_search_service_shows_the_live_version_and_zeroes_the_one_it_left(self, world: World) -> None:
        page = world.pages["search"]
        assert value(page, "vlmops_collection_items", collection="dash", version="1") == 0
        assert value(page, "vlmops_collection_live", collection="dash", model=MODEL, version=world.v2) == 1
        assert value(page, "vlmops_collection_live", collection="dash", model=MODEL, version="1") == 0
        assert value(page, "vlmops_collection_items", collection="bulk", version="1") == 4
        assert value(page, "vlmops_reindex_failures", collection="dash") == 0
        assert value(page, "vlmops_reindex_active", collection="dash") == 0

    def test_loaded_versions_follow_the_pool(self, world: World) -> None:
        """Production, the version the reindex pinned, its eviction by another pin (one kept), and a
        promotion, which moves the old production version into the pinned ones."""
        emb, page = world.embedding, world.pages["embedding"]
        assert loaded(page, "1", "production") == 1 and loaded(page, world.v2, "pinned") == 1
        v3 = world.store.register(MODEL, ClipModel.from_pretrained("vlmops-toy-clip", seed=11)).version
        out = post(emb, "/embed_text", items=[{"text": "a star", "model_version": v3}])
        assert out.status_code == 200 and out.json()[0]["version"] == v3
        page = scrape(emb)
        assert loaded(page, v3, "pinned") == 1 and loaded(page, world.v2, "pinned") == 0
        assert loaded(page, "1", "production") == 1
        world.store.promote(MODEL, v3, reason="the dashboard test")
        page = wait_for(emb, lambda p: loaded(p, v3, "production") == 1)
        assert loaded(page, v3, "pinned") == 0 and loaded(page, "1", "production") == 0
        assert loaded(page, "1", "pinned") == 1
