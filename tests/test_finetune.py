"""Fine-tuning on a tiny random-weight network and synthetic images."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import COLORS, TINY, make_dataset, make_image

from graft import inference
from graft.backbones import DEFAULT_BACKBONE, create_backbone
from graft.cli import main
from graft.data import assign_splits, scan_dataset
from graft.errors import ConfigError, ModelError
from graft.finetune import FinetuneConfig, FinetuneModel, finetune, parse_augment
from graft.finetune import trainer as trainer_module


def _config(**overrides) -> FinetuneConfig:
    base = dict(backbone=TINY, weights="random", epochs=30, fine_tune_epochs=2, batch_size=8,
                lr=0.05, fine_tune_lr=1e-3, workers=0, augment="none", patience=10,
                val_size=0.25)
    base.update(overrides)
    return FinetuneConfig(**base)


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ft") / "colors", n_per_class=12)


def test_frozen_prefix_split_matches_the_full_network():
    import torch

    model = FinetuneModel(create_backbone(TINY, weights="random"), n_classes=3).eval()
    images = torch.randint(0, 256, (2, *model.backbone.preprocess.size, 3), dtype=torch.uint8)
    for blocks in (0, 2, 4):
        model.unfreeze(blocks)
        prefix, rest = model.split_frozen_prefix()
        with torch.no_grad():
            assert torch.allclose(rest(prefix(images)), model(images), atol=1e-5)
    model.unfreeze("all")
    assert model.split_frozen_prefix() is None  # nothing frozen: nothing to cache
    # L2 or flip after the cut: no split (its halves would skip them), the full network instead
    for options in ({"normalize": "l2"}, {"tta": "flip"}):
        model = FinetuneModel(create_backbone(TINY, weights="random", **options), n_classes=3)
        model.unfreeze(0)
        assert model.split_frozen_prefix() is None


def test_unfreeze_counts_trainable_parameters():
    model = FinetuneModel(create_backbone(TINY, weights="random"), n_classes=3)
    head = sum(p.numel() for p in model.classifier.parameters())
    assert model.trainable_parameters() == head  # stage 1: only the new head
    groups = model.groups
    params = dict(model.backbone.model.named_parameters())
    top2 = sum(params[name].numel() for group in groups[-2:] for name in group)
    assert model.unfreeze(2) == 2
    assert model.trainable_parameters() == head + top2
    model.unfreeze("all")
    assert model.trainable_parameters() == head + sum(p.numel() for p in params.values())
    model.train()
    assert not model.image_model.training  # BatchNorm stays in inference mode


def test_finetune_learns_saves_and_predicts(colors, tmp_path, capsys):
    out = tmp_path / "ft"
    logs: list[str] = []
    result = finetune(colors, out=out, config=_config(), progress=False, log=logs.append)
    cached = [line for line in logs if "frozen prefix" in line]  # augmentation is off
    assert len(cached) == 2  # stage 1 (whole backbone) and stage 2 (below the unfrozen blocks)
    history = result.history
    stage1 = [h for h in history if h["stage"] == 1]
    assert stage1[-1]["train_loss"] < stage1[0]["train_loss"]
    assert {h["stage"] for h in history} == {1, 2}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["history"] == history and set(metrics["stage_test_accuracy"]) == {"1", "2"}
    assert metrics["accuracy"] >= 0.8
    assert (out / "learning_curves.png").stat().st_size > 10_000
    assert not list(out.glob("*.pt"))  # the checkpoint is gone once the run succeeded
    config = json.loads((out / "graft.json").read_text())
    assert config["head"]["name"] == "finetune"
    assert config["backbones"][0]["weights_source"] == "finetuned from random"
    capsys.readouterr()
    assert main(["evaluate", str(out), str(colors), "--json", "-q"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    # evaluate scores the same held-out split with the same saved model: the same numbers
    assert evaluated["n_test"] == metrics["n_test"] and evaluated["accuracy"] == metrics["accuracy"]
    assert main(["predict", str(out), str(colors / "blue"), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sum(line["predictions"][0]["label"] == "blue" for line in lines) >= 10


def test_resume_continues_from_the_saved_epoch(colors, tmp_path, monkeypatch):
    config = _config(epochs=4, fine_tune_epochs=1)
    real = trainer_module._run_epoch
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # the training pass of epoch 3 (each epoch: train, then val)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "_run_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetune(colors, out=tmp_path / "ft", config=config, progress=False)
    assert (tmp_path / "ft" / trainer_module.CHECKPOINT).is_file()
    monkeypatch.setattr(trainer_module, "_run_epoch", real)
    with pytest.raises(ConfigError, match="other options"):
        finetune(colors, out=tmp_path / "ft", config=_config(epochs=5), resume=True,
                 progress=False)
    logs: list[str] = []
    result = finetune(colors, out=tmp_path / "ft", config=config, resume=True, progress=False,
                      log=logs.append)
    assert any("Resuming at stage 1, after epoch 2" in line for line in logs)
    assert [(h["stage"], h["epoch"]) for h in result.history] == [(1, 1), (1, 2), (1, 3), (1, 4),
                                                                  (2, 1)]
    assert not list((tmp_path / "ft").glob("*.pt"))  # a finished run keeps no checkpoint
    assert not list((tmp_path / "ft").glob("*.tmp"))


def _test_split(data, config: FinetuneConfig):
    dataset = assign_splits(scan_dataset(data), test_size=config.test_size,
                            val_size=config.val_size, seed=config.seed,
                            group_regex=config.group_regex)
    return [s for s in dataset.samples if s.split == "test"], dataset.classes


def test_final_metrics_come_from_the_saved_model(colors, tmp_path):
    out = tmp_path / "ft"
    config = _config(epochs=3, fine_tune_epochs=1)
    logs: list[str] = []
    result = finetune(colors, out=out, config=config, progress=False, log=logs.append)
    kept = sorted(p.name for p in out.iterdir() if p.suffix in (".pt", ".tmp", ".onnx", ".json"))
    assert kept == ["backbone.onnx", "graft.json", "head.onnx", "metrics.json"]  # no checkpoint
    assert (out / "report.html").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result.metrics))
    assert metrics["artifact_max_abs_difference"] <= trainer_module.PARITY_TOLERANCE
    test, classes = _test_split(colors, config)
    probabilities = inference.load(out).predict_proba([s.path for s in test])
    y_true = np.array([classes.index(s.label) for s in test])
    assert metrics["n_test"] == len(test)
    assert metrics["accuracy"] == float(np.mean(probabilities.argmax(1) == y_true))
    assert metrics["final_stage"] in (1, 2)
    final = [line for line in logs if line.startswith("Final model:")]
    assert len(final) == 1 and f"stage {metrics['final_stage']} weights" in final[0]
    assert "with the lowest validation loss" in final[0]
    assert "stage 1: " in final[0] and "stage 2: " in final[0]


def test_a_saved_model_that_disagrees_is_refused(colors, tmp_path, monkeypatch):
    real = inference.Predictor.predict_proba
    monkeypatch.setattr(inference.Predictor, "predict_proba",
                        lambda self, images: real(self, images) + 1e-3)
    out = tmp_path / "ft"
    with pytest.raises(ModelError, match="does not reproduce the trained network"):
        finetune(colors, out=out, config=_config(epochs=1, fine_tune_epochs=0), progress=False)
    assert not (out / "graft.json").exists()  # the model was not saved
    assert (out / trainer_module.CHECKPOINT).is_file()  # the run can still be inspected/resumed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]  # no staging directory left


def test_stage_two_skipped_is_said(colors, tmp_path):
    logs: list[str] = []
    result = finetune(colors, out=tmp_path / "ft", config=_config(epochs=2, fine_tune_epochs=0),
                      progress=False, log=logs.append)
    # the library names its parameter (the CLI's log, its flag)
    assert "Stage 2 skipped: fine_tune_epochs is 0, so no backbone block is unfrozen and the " \
           "final model is stage 1's." in logs
    assert not any("up to 0 epochs" in line for line in logs)
    assert not any(line.startswith("Stage 2:") for line in logs)
    assert {h["stage"] for h in result.history} == {1}
    final = next(line for line in logs if line.startswith("Final model:"))
    assert "stage 1 weights" in final and "the only stage trained" in final
    assert result.metrics["final_stage"] == 1
    assert set(result.metrics["stage_test_accuracy"]) == {"1"}


def test_group_regex_keeps_groups_together(tmp_path, monkeypatch):
    data = tmp_path / "groups"
    for c_index, name in enumerate(COLORS):
        for group in range(6):
            for shot in range(3):
                make_image(data / name / f"g{group}_{shot}.png", COLORS[name],
                           seed=c_index * 100 + group * 10 + shot)
    regex = r"^(\w+/g\d+)_"
    seen = {}
    real = trainer_module._splits

    def spy(*args, **kwargs):
        seen["dataset"] = real(*args, **kwargs)
        return seen["dataset"]

    monkeypatch.setattr(trainer_module, "_splits", spy)
    config = _config(epochs=1, fine_tune_epochs=0, group_regex=regex)
    result = finetune(data, out=tmp_path / "ft", config=config, progress=False)
    splits: dict[str, set[str]] = {}
    for sample in seen["dataset"].samples:
        splits.setdefault(re.match(regex, sample.relpath).group(1), set()).add(sample.split)
    assert all(len(found) == 1 for found in splits.values())  # no group straddles splits
    assert {next(iter(found)) for found in splits.values()} == {"train", "val", "test"}
    test, _ = _test_split(data, config)  # the test split of `graft train --group-regex`
    assert result.metrics["n_test"] == len(test)
    saved = json.loads((tmp_path / "ft" / "graft.json").read_text())
    assert saved["split"]["group_regex"] == regex
    assert sum(saved["training"]["counts"]["test"].values()) == len(test)
    # Without the regex, the same images do straddle: the test above is not vacuous.
    plain = assign_splits(scan_dataset(data), test_size=0.2, val_size=0.25, seed=0)
    by_group: dict[str, set[str]] = {}
    for sample in plain.samples:
        by_group.setdefault(re.match(regex, sample.relpath).group(1), set()).add(sample.split)
    assert any(len(found) > 1 for found in by_group.values())


def test_default_backbone_fine_tunes(tmp_path):
    import torch

    assert FinetuneConfig().backbone == DEFAULT_BACKBONE
    model = FinetuneModel(create_backbone(DEFAULT_BACKBONE, weights="random"), n_classes=2).eval()
    assert len(model.groups) >= 4  # stem, blocks..., head conv: --unfreeze counts timm's blocks
    images = torch.randint(0, 256, (2, *model.backbone.preprocess.size, 3), dtype=torch.uint8)
    for blocks in (0, 2):
        model.unfreeze(blocks)
        prefix, rest = model.split_frozen_prefix()  # the frozen-prefix cache applies
        with torch.no_grad():
            assert torch.allclose(rest(prefix(images)), model(images), atol=1e-5)


def test_deterministic_with_seed(colors, tmp_path):
    config = _config(epochs=2, fine_tune_epochs=0, augment="flip,crop")
    first = finetune(colors, out=tmp_path / "a", config=config, progress=False)
    second = finetune(colors, out=tmp_path / "b", config=config, progress=False)
    assert [h["train_loss"] for h in first.history] == [h["train_loss"] for h in second.history]


def test_options_are_checked(colors, tmp_path):
    assert parse_augment("flip, Rotate,crop,color") == ("flip", "rotate", "crop", "color")
    with pytest.raises(ConfigError, match="Unknown augmentation"):
        parse_augment("flip,blur")
    with pytest.raises(ConfigError, match="^unfreeze"):
        finetune(colors, out=tmp_path / "x", config=_config(unfreeze="top"), progress=False)
    with pytest.raises(ConfigError, match="^epochs and fine_tune_epochs are both 0"):
        finetune(colors, out=tmp_path / "x", config=_config(epochs=0, fine_tune_epochs=0),
                 progress=False)


def test_cli_finetune_with_class_weights(colors, tmp_path, capsys):
    assert main(["finetune", str(colors), "--out", str(tmp_path / "m"), "--backbone", TINY,
                 "--weights", "random", "--epochs", "2", "--fine-tune-epochs", "1",
                 "--batch-size", "8", "--workers", "0", "--augment", "flip,rotate,crop,color",
                 "--class-weights", "auto", "--lr", "0.05", "-q"]) == 0
    out = capsys.readouterr().out
    assert "stage 1:" in out and "precision" in out
