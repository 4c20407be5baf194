"""Contract tests: captioning, VQA and grounding services as real ``bentoml serve`` processes, one per family,
each serving a tiny random-config model built in the test and registered in MLflow."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from infra.images import encode_png, to_base64
from infra.process import ServiceProcess
from infra.toyworld import ToyWorld
from registry.store import RegistryStore
from services.client import CaptioningGrpc, GroundingGrpc, VQAGrpc
from services.proto.vlmops.v1 import (
    captioning_pb2,
    captioning_pb2_grpc,
    grounding_pb2,
    grounding_pb2_grpc,
    vqa_pb2,
    vqa_pb2_grpc,
)
from tests import hf_tiny
from tests.conftest import make_settings
from tests.metrics import batched
from tests.registry.test_hf_families import ANSWERS, tiny

pytestmark = pytest.mark.slow
VOCAB = set(hf_tiny.WORDS)


@dataclass(frozen=True)
class Case:
    family: str
    service: str
    route: str

    def item(self, image: str, **extra: Any) -> dict[str, Any]:
        match self.service:
            case "captioning":
                return {"image": image, **extra}
            case "vqa":
                return {"image": image, "question": "what colour is the star?", **extra}
            case _:
                return {"image": image, "queries": ["a red circle", "a star"], "threshold": 0.0, **extra}


CASES = [
    Case("blip-caption", "captioning", "/caption"),
    Case("git-caption", "captioning", "/caption"),
    Case("blip-vqa", "vqa", "/answer"),
    Case("vilt-vqa", "vqa", "/answer"),
    Case("owlvit", "grounding", "/ground"),
    Case("owlv2", "grounding", "/ground"),
]
IMAGE = to_base64(encode_png(ToyWorld().sample(1).image))


@pytest.fixture(scope="module", params=CASES, ids=[c.family for c in CASES])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Case, str, str]]:
    """(case, HTTP URL, gRPC target) of a running service."""
    case: Case = request.param
    home = tmp_path_factory.mktemp(case.family)
    store = RegistryStore.from_settings(make_settings(home))
    name = f"tiny-{case.family}"
    info = store.register(name, tiny(case.family, home / "build"))
    store.promote(name, info.version)
    prefix = f"VLMOPS_{case.service.upper()}__"
    env = {"VLMOPS_HOME": str(home), f"{prefix}MODEL_NAME": name, f"{prefix}MAX_LATENCY_MS": "10000"}
    with ServiceProcess(case.service, env=env, log_path=home / "service.log") as svc:
        yield case, svc.url, svc.grpc_target


def post(url: str, route: str, items: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(f"{url}{route}", json={"items": items}, timeout=60)


def check_output(case: Case, out: dict[str, Any], image_size: tuple[int, int] = (64, 64)) -> None:
    assert out["model"] == f"tiny-{case.family}" and out["version"] == "1"
    if case.service == "captioning":
        assert isinstance(out["caption"], str)
        assert set(re.findall(r"[a-z]+|[?,]", out["caption"])) <= VOCAB
    elif case.service == "vqa":
        if case.family == "vilt-vqa":
            assert out["answer"] in ANSWERS and 0.0 <= out["score"] <= 1.0
        else:
            assert set(re.findall(r"[a-z]+|[?,]", out["answer"])) <= VOCAB and out["score"] is None
    else:
        width, height = image_size
        scores = [d["score"] for d in out["detections"]]
        assert out["detections"] and scores == sorted(scores, reverse=True)
        for d in out["detections"]:
            x0, y0, x1, y1 = d["box"]
            assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height
            assert d["query"] in {"a red circle", "a star"}


class TestVisionServices:
    def test_outputs_have_the_documented_form(self, served: tuple[Case, str, str]) -> None:
        case, url, _ = served
        resp = post(url, case.route, [case.item(IMAGE), case.item(IMAGE)])
        assert resp.status_code == 200, resp.text
        outs = resp.json()
        assert len(outs) == 2
        if case.service == "grounding":  # same input, same boxes (scores to float tolerance across batch rows)
            first, second = outs[0]["detections"], outs[1]["detections"]
            assert len(first) == len(second) and abs(first[0]["score"] - second[0]["score"]) < 1e-4
        else:  # greedy decoding: same input, same text
            assert outs[0]["answer" if case.service == "vqa" else "caption"] == outs[1].get(
                "answer", outs[1].get("caption")
            )
            if outs[0].get("score") is not None:
                assert abs(outs[0]["score"] - outs[1]["score"]) < 1e-5
        for out in outs:
            check_output(case, out)

    def test_concurrent_requests_are_batched(self, served: tuple[Case, str, str]) -> None:
        case, url, _ = served
        images = [to_base64(encode_png(s.image)) for s in ToyWorld().samples(12)]
        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda im: post(url, case.route, [case.item(im)]), images))
        assert all(r.status_code == 200 for r in responses)
        for r in responses:
            check_output(case, r.json()[0])
        assert batched(url, case.route.strip("/")), "every batch held one item"

    def test_bad_input_gets_a_4xx_and_the_service_keeps_serving(self, served: tuple[Case, str, str]) -> None:
        case, url, _ = served
        bad = [
            (case.item("bm90IGFuIGltYWdl"), 400, "decoded"),
            (case.item(IMAGE, model_version="42"), 404, "no version '42'"),
        ]
        if case.service == "captioning":
            bad += [
                (case.item(IMAGE, max_new_tokens=10_000), 400, "less than or equal"),
                (case.item(IMAGE, num_beams=0), 400, "greater"),
            ]
        elif case.service == "vqa":
            bad += [(case.item(IMAGE, question="  "), 400, "question is empty")]
        else:
            bad += [
                (case.item(IMAGE, queries=[]), 400, "at least 1"),
                (case.item(IMAGE, threshold=2), 400, "less than"),
            ]
        for item, status, message in bad:
            resp = post(url, case.route, [item])
            assert resp.status_code == status, (item, resp.text)
            assert message in resp.text
        assert post(url, case.route, []).status_code == 400
        resp = post(url, case.route, [case.item(IMAGE)])
        assert resp.status_code == 200
        check_output(case, resp.json()[0])


def over_grpc(case: Case, target: str, image: bytes) -> dict[str, Any]:
    """The case's item over gRPC, through the typed client, as the HTTP API's JSON would be."""
    if case.service == "captioning":
        with CaptioningGrpc(target) as client:
            out = client.caption([image])[0]
        return {"caption": out.caption, "model": out.model.model, "version": out.model.version}
    if case.service == "vqa":
        with VQAGrpc(target) as client:
            got = client.answer([(image, "what colour is the star?")])[0]
        score = got.score if got.HasField("score") else None
        return {"answer": got.answer, "score": score, "model": got.model.model, "version": got.model.version}
    with GroundingGrpc(target) as client:
        found = client.ground(image, ["a red circle", "a star"], threshold=0.0)
    boxes = [
        {"box": [d.box.x0, d.box.y0, d.box.x1, d.box.y1], "score": d.score, "query": d.query} for d in found.detections
    ]
    return {"detections": boxes, "model": found.model.model, "version": found.model.version}


class TestOverGrpc:
    def test_grpc_gives_the_http_answer(self, served: tuple[Case, str, str]) -> None:
        case, url, target = served
        image = ToyWorld().sample(1).image
        out = over_grpc(case, target, encode_png(image))
        check_output(case, out)
        (http,) = post(url, case.route, [case.item(IMAGE)]).json()
        if case.service == "grounding":
            assert [d["query"] for d in out["detections"]] == [d["query"] for d in http["detections"]]
            assert np.allclose([d["box"] for d in out["detections"]], [d["box"] for d in http["detections"]], atol=1e-3)
        else:
            key = "caption" if case.service == "captioning" else "answer"
            assert out[key] == http[key]

    def test_bad_input_gets_its_code_and_the_service_keeps_serving(self, served: tuple[Case, str, str]) -> None:
        case, _, target = served
        good = encode_png(ToyWorld().sample(1).image)
        with grpc.insecure_channel(target) as channel:
            if case.service == "captioning":
                call = captioning_pb2_grpc.CaptioningStub(channel).Caption
                item, request = captioning_pb2.CaptionItem, captioning_pb2.CaptionRequest
                bad = [
                    (item(image=good, max_new_tokens=10_000), "less than or equal"),
                    (item(image=good, num_beams=0), "greater"),
                ]
            elif case.service == "vqa":
                call = vqa_pb2_grpc.VQAStub(channel).Answer
                item, request = vqa_pb2.QuestionItem, vqa_pb2.AnswerRequest
                bad = [(item(image=good, question="  "), "question is empty")]
            else:
                call = grounding_pb2_grpc.GroundingStub(channel).Ground
                item, request = grounding_pb2.GroundingItem, grounding_pb2.GroundRequest
                bad = [(item(image=good), "at least 1"), (item(image=good, queries=["a"], threshold=2), "less than")]
            fields = {"question": "what colour?"} if case.service == "vqa" else {}
            fields |= {"queries": ["a star"]} if case.service == "grounding" else {}
            bad += [(item(image=b"not an image", **fields), "decoded")]
            for wrong, message in bad:
                with pytest.raises(grpc.RpcError) as caught:
                    call(request(items=[wrong]), timeout=60)
                assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT and message in caught.value.details()
            with pytest.raises(grpc.RpcError) as caught:
                call(request(items=[item(image=good, model_version="42", **fields)]), timeout=60)
            assert caught.value.code() is grpc.StatusCode.NOT_FOUND
            answer = call(request(items=[item(image=good, **fields)]), timeout=60)
            assert answer.ListFields(), "an answer after the errors"
