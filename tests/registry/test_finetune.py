"""LoRA finetuning, evaluation and the promotion gate, in process (the job path runs in tests/workers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from infra.errors import InvalidInput
from infra.settings import Settings
from infra.toyworld import Domain, Split
from registry.datasets import PairDataset, load_pairs, write_toy_dataset
from registry.evaluation import _retrieval, evaluate
from registry.families.clip import ClipModel
from registry.finetune import FinetuneConfig, finetune, prepare, trainable_parameters
from registry.gate import GateRefused, evaluate_versions, gated_promote
from registry.store import RegistryStore


@pytest.fixture(scope="module")
def plain_eval(tmp_path_factory: pytest.TempPathFactory) -> PairDataset:
    return load_pairs(write_toy_dataset(tmp_path_factory.mktemp("eval"), 96, Domain.PLAIN, Split.TEST))


@pytest.fixture(scope="module")
def shifted_train(tmp_path_factory: pytest.TempPathFactory) -> PairDataset:
    return load_pairs(write_toy_dataset(tmp_path_factory.mktemp("train"), 192, Domain.SHIFTED, Split.TRAIN))


def test_retrieval_metrics_on_a_known_ranking() -> None:
    # query 0: its one relevant doc ranks first; query 1: its two relevant docs rank 2nd and 4th
    scores = torch.tensor([[0.9, 0.1, 0.2, 0.3], [0.9, 0.8, 0.1, 0.5]])
    relevant = torch.tensor([[True, False, False, False], [False, True, False, True]])
    m = _retrieval(scores, relevant, [1, 2], "q")
    assert m["q_recall@1"] == pytest.approx((1 + 0) / 2)
    assert m["q_recall@2"] == pytest.approx((1 + 0.5) / 2)
    assert m["q_precision@2"] == pytest.approx((0.5 + 0.5) / 2)
    assert m["q_r_precision"] == pytest.approx((1 + 0.5) / 2)


def test_evaluation_of_the_toy_clip(toy_clip: tuple[ClipModel, dict[str, float]], plain_eval: PairDataset) -> None:
    report = evaluate(toy_clip[0], plain_eval, "toy")
    m = report.metrics
    assert m["zero_shot_acc"] >= 0.9 and m["i2t_recall@1"] >= 0.9
    assert all(0.0 <= v <= 1.0 for v in m.values())
    assert m["t2i_recall@10"] >= m["t2i_recall@5"] >= m["t2i_recall@1"]
    assert len(report.per_class) == len(set(plain_eval.labels or []))
    assert sum(int(r["n_images"]) for r in report.per_class.values()) == len(plain_eval)


def test_lora_wraps_attention_and_mlp_only(random_clip: ClipModel) -> None:
    from peft.tuners.lora.layer import Linear as LoraLinear
    from peft.tuners.lora.layer import MultiheadAttention as LoraMHA

    total = sum(p.numel() for p in random_clip.model.parameters())
    prepare(random_clip, FinetuneConfig(lora_r=4))
    block = random_clip.model.visual.transformer.resblocks[0]
    assert isinstance(block.attn, LoraMHA) and isinstance(block.mlp.c_fc, LoraLinear)
    assert isinstance(random_clip.model.transformer.resblocks[0].mlp.c_proj, LoraLinear)
    trainable = trainable_parameters(random_clip.model)
    assert "logit_scale" in trainable  # the learnable temperature
    assert all("lora_" in n for n in trainable if n != "logit_scale")
    assert sum(p.numel() for p in trainable.values()) < 0.05 * total
    with pytest.raises(InvalidInput, match="not in"):
        prepare(ClipModel.from_pretrained("vlmops-toy-clip", seed=2), FinetuneConfig(target_modules=["q_proj"]))


def test_finetune_changes_the_model_and_merges(
    toy_clip: tuple[ClipModel, dict[str, float]], shifted_train: PairDataset, tmp_path: Path
) -> None:
    base = toy_clip[0]
    base.save(tmp_path / "base")
    model = ClipModel.load(tmp_path / "base")
    cfg = FinetuneConfig(max_steps=30, batch_size=32, lr=5e-3, warmup_steps=2)
    result = finetune(model, shifted_train, None, cfg, tmp_path / "work")
    losses = result.history["loss"]
    assert len(losses) == 30 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert result.trainable_params < result.total_params / 10
    # merged: plain open_clip modules again, and it saves and loads like any version
    assert type(model.model.visual.transformer.resblocks[0].attn) is torch.nn.MultiheadAttention
    images = list(shifted_train.images[:8])
    tuned, before = model.encode_images(images), base.encode_images(images)
    assert (tuned - before).abs().max() > 1e-3
    assert torch.allclose(tuned.norm(dim=-1), torch.ones(8), atol=1e-4)
    model.save(tmp_path / "tuned")
    assert torch.allclose(ClipModel.load(tmp_path / "tuned").encode_images(images), tuned, atol=1e-5)
    assert (tmp_path / "work" / "adapter" / "adapter_model.safetensors").is_file()


def test_a_run_cut_short_resumes_from_its_checkpoint_and_ends_where_an_uninterrupted_one_does(
    random_clip: ClipModel, shifted_train: PairDataset, tmp_path: Path
) -> None:
    random_clip.save(tmp_path / "base")
    cfg = FinetuneConfig(max_steps=10, batch_size=16, checkpoint_every=4, warmup_steps=0)
    whole = ClipModel.load(tmp_path / "base")
    finetune(whole, shifted_train, None, cfg, tmp_path / "whole")

    class Killed(Exception):
        pass

    def die_at_6(step: int, total: int, loss: float) -> None:
        if step == 6:
            raise Killed

    with pytest.raises(Killed):
        finetune(ClipModel.load(tmp_path / "base"), shifted_train, None, cfg, tmp_path / "cut", progress=die_at_6)
    resumed = ClipModel.load(tmp_path / "base")
    result = finetune(resumed, shifted_train, None, cfg, tmp_path / "cut")
    assert result.resumed_from == 4 and result.steps == 10 and len(result.history["loss"]) == 10
    images = list(shifted_train.images[:8])
    assert torch.allclose(resumed.encode_images(images), whole.encode_images(images), atol=1e-5)


class TestGate:
    def test_refuses_worse_accepts_better_force_is_recorded(
        self, tmp_path: Path, toy_clip: tuple[ClipModel, dict[str, float]], plain_eval: PairDataset
    ) -> None:
        settings = Settings(home=tmp_path / "home")
        store = RegistryStore.from_settings(settings)
        good = store.register("m", toy_clip[0]).version
        bad = store.register("m", ClipModel.from_pretrained("vlmops-toy-clip", seed=3)).version
        store.promote("m", bad, reason="start from the untrained one")
        eval_dir = tmp_path / "eval"
        path = write_toy_dataset(eval_dir, 96, Domain.PLAIN, Split.TEST)

        event, verdict = gated_promote(store, settings, "m", good, "trained", dataset=str(path))
        assert verdict is not None and verdict.passed and event.version == good and not event.forced
        assert event.gate is not None and event.gate["passed"] is True
        # both were scored once on this dataset: the figures are stored on the versions
        tags = store.get("m", bad).tags
        assert any(k.startswith("eval.") for k in tags)

        with pytest.raises(GateRefused, match="WORSE"):
            gated_promote(store, settings, "m", bad, "regress")  # stored figures, no dataset needed
        assert store.by_alias("m", "production").version == good

        event, verdict = gated_promote(store, settings, "m", bad, "on purpose", force=True)
        assert event.forced and verdict is not None and not verdict.passed
        assert store.by_alias("m", "production").version == bad
        assert store.events("m")[-1].forced and store.events("m")[-1].gate["passed"] is False  # type: ignore[index]

        margin = settings.model_copy(update={"gate": settings.gate.model_copy(update={"margin": 1.0})})
        event, verdict = gated_promote(store, margin, "m", good, "back")
        assert verdict is not None and verdict.passed

    def test_eval_run_is_logged_with_artifacts(
        self, tmp_path: Path, toy_clip: tuple[ClipModel, dict[str, float]], plain_eval: PairDataset
    ) -> None:
        settings = Settings(home=tmp_path / "home")
        store = RegistryStore.from_settings(settings)
        v = store.register("m", toy_clip[0])
        reports = evaluate_versions(store, settings, [v], plain_eval)
        assert reports["v1"].metrics["zero_shot_acc"] >= 0.9
        runs = store.client.search_runs([store.experiment_id("vlmops-eval")])
        assert len(runs) == 1
        files = {a.path for a in store.client.list_artifacts(runs[0].info.run_id, "eval")}
        assert {"eval/metrics.png", "eval/table.txt", "eval/report-v1.json"} <= files
        assert runs[0].data.metrics["v1.zero_shot_acc"] == pytest.approx(reports["v1"].metrics["zero_shot_acc"])


@pytest.mark.parametrize(
    "name, text",
    [
        ("cfg.json", '{"lora_r": 4, "lr": 0.01, "target_modules": ["attn"]}'),
        ("cfg.toml", 'lora_r = 4\nlr = 0.01\ntarget_modules = ["attn"]\n'),
        ("cfg.yaml", "lora_r: 4\nlr: 0.01\ntarget_modules: [attn]\n"),
    ],
)
def test_config_files_and_flags(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    cfg = FinetuneConfig.build(tmp_path / name, epochs=5, lr=None)  # a flag not given (None) keeps the file's value
    assert (cfg.lora_r, cfg.lr, cfg.target_modules, cfg.epochs) == (4, 0.01, ["attn"], 5)
    with pytest.raises(InvalidInput, match="lora_r"):
        FinetuneConfig.build(tmp_path / name, lora_r=0)
