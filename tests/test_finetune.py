"""Fine-tuning on a tiny random-weight network and synthetic images."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, make_dataset

from graft.backbones import create_backbone
from graft.cli import main
from graft.errors import ConfigError
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
    config = json.loads((out / "graft.json").read_text())
    assert config["head"]["name"] == "finetune"
    assert config["backbones"][0]["weights_source"] == "finetuned from random"
    capsys.readouterr()
    assert main(["evaluate", str(out), str(colors), "--json", "-q"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["n_test"] == 36 and evaluated["accuracy"] >= 0.8
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
    monkeypatch.setattr(trainer_module, "_run_epoch", real)
    logs: list[str] = []
    result = finetune(colors, out=tmp_path / "ft", config=config, resume=True, progress=False,
                      log=logs.append)
    assert any("Resuming at stage 1, after epoch 2" in line for line in logs)
    assert [(h["stage"], h["epoch"]) for h in result.history] == [(1, 1), (1, 2), (1, 3), (1, 4),
                                                                  (2, 1)]
    with pytest.raises(ConfigError, match="other options"):
        finetune(colors, out=tmp_path / "ft", config=_config(epochs=5), resume=True,
                 progress=False)


def test_deterministic_with_seed(colors, tmp_path):
    config = _config(epochs=2, fine_tune_epochs=0, augment="flip,crop")
    first = finetune(colors, out=tmp_path / "a", config=config, progress=False)
    second = finetune(colors, out=tmp_path / "b", config=config, progress=False)
    assert [h["train_loss"] for h in first.history] == [h["train_loss"] for h in second.history]


def test_options_are_checked(colors, tmp_path):
    assert parse_augment("flip, Rotate,crop,color") == ("flip", "rotate", "crop", "color")
    with pytest.raises(ConfigError, match="Unknown augmentation"):
        parse_augment("flip,blur")
    with pytest.raises(ConfigError, match="--unfreeze"):
        finetune(colors, out=tmp_path / "x", config=_config(unfreeze="top"), progress=False)


def test_cli_finetune_with_class_weights(colors, tmp_path, capsys):
    assert main(["finetune", str(colors), "--out", str(tmp_path / "m"), "--backbone", TINY,
                 "--weights", "random", "--epochs", "2", "--fine-tune-epochs", "1",
                 "--batch-size", "8", "--workers", "0", "--augment", "flip,rotate,crop,color",
                 "--class-weights", "auto", "--lr", "0.05", "-q"]) == 0
    out = capsys.readouterr().out
    assert "stage 1:" in out and "precision" in out
