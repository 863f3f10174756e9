"""The backbone zoo: every network and cut of the seed tutorials, fusion, Keras weights, ONNX parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY, make_dataset, shared_path

from graft.backbones import (
    ImageModel,
    create_backbone,
    create_backbones,
    describe_backbone,
    list_backbones,
    per_backbone,
)
from graft.cli import main
from graft.data import scan_dataset
from graft.errors import BackboneError, ConfigError, WeightsError
from graft.features import create_engine, extract_dataset, open_cache

# (backbone, --layer, --pool, --image-size, feature dim, input size): the table.
TABLE = [
    ("vgg16", "fc6", "avg", None, 4096, 224),
    ("vgg16", "relu6", "avg", None, 4096, 224),
    ("vgg16", "pool5", "avg", None, 25088, 224),
    ("inception_v3", None, "avg", None, 2048, 299),
    ("inception_v3", "pool_3", "avg", None, 2048, 299),
    ("resnet50", None, "avg", None, 2048, 224),
    ("mobilenetv2_100", None, "avg", None, 1280, 224),
    ("mobilenetv2_100", None, "avg", 160, 1280, 160),
    ("tf_efficientnet_lite0", None, "avg", None, 1280, 224),
    ("tf_efficientnet_lite1", None, "avg", None, 1280, 240),
    ("tf_efficientnet_lite2", None, "avg", None, 1280, 260),
    ("squeezenet1_1", None, "avg", None, 512, 227),
    ("resnet50", "layer3", "avgmax", None, 2048, 224),
    (TINY, "blocks.3", "flatten", None, 48 * 10 * 10, 160),
]


@pytest.mark.parametrize("name, layer, pool, size, dim, input_size", TABLE)
def test_table_dims(name, layer, pool, size, dim, input_size):
    backbone = create_backbone(name, weights="random", layer=layer, pool=pool, image_size=size)
    assert backbone.num_features == dim
    assert backbone.preprocess.input_size == (3, input_size, input_size)
    with torch.no_grad():
        assert backbone(torch.zeros(2, *backbone.preprocess.input_size)).shape == (2, dim)


def test_vgg_cuts_are_the_classic_layers():
    vgg = create_backbone("vgg16", weights="random", layer="fc6")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        pool5 = vgg.model.features(x)
        fc6 = torch.relu(vgg.model.pre_logits.fc1(pool5)).flatten(1)
        assert torch.allclose(vgg(x), fc6, atol=1e-5)
        assert vgg.layer == "fc6" and (fc6 >= 0).all()  # relu6: after the ReLU


def test_unknown_layer_lists_named_cuts():
    with pytest.raises(BackboneError, match=r"Valid layers: pool, logits, fc6, fc7, pool5, relu6"):
        create_backbone("vgg16", weights="random", layer="fc8")


def test_describe_every_registered_backbone():
    for spec in list_backbones():
        info = describe_backbone(spec.name)
        assert info["layers"][0] == {"layer": "pool", "dim": info["layers"][0]["dim"]}
        assert len(info["input_size"]) == 3 and len(info["mean"]) == 3 and len(info["std"]) == 3
    vgg = describe_backbone("vgg16")
    dims = {row["layer"]: row["dim"] for row in vgg["layers"]}
    assert (vgg["default_layer"], dims["fc6"], dims["pool5"]) == ("fc6", 4096, 25088)
    assert describe_backbone("tf_efficientnet_lite0")["offline_weights"] is True
    assert describe_backbone("inception_v3")["input_size"] == [3, 299, 299]


def test_cli_backbones_json(capsys):
    assert main(["backbones", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {row["name"] for row in rows}
    assert {"vgg16", "inception_v3", "resnet50", "mobilenetv2_100", "tf_efficientnet_lite0",
            "squeezenet1_1"} <= names
    for row in rows:
        assert {"name", "layers", "input_size", "mean", "std", "offline_weights"} <= set(row)
        assert all({"layer", "dim"} == set(layer) for layer in row["layers"])


def test_fusion_and_per_backbone_options(tmp_path):
    fused = create_backbones(f"{TINY}+test_resnet", weights="random")
    assert [b.name for b in fused] == [TINY, "test_resnet"]
    assert per_backbone("weights", ["test_resnet=/w.pth"], [TINY, "test_resnet"]) == [None, "/w.pth"]
    assert per_backbone("weights", "/only.pth", [TINY]) == ["/only.pth"]
    with pytest.raises(ConfigError, match="ambiguous"):
        per_backbone("weights", "/w.pth", [TINY, "test_resnet"])
    with pytest.raises(ConfigError, match="not one of the backbones"):
        per_backbone("weights", ["resnet50=/w.pth"], [TINY, "test_resnet"])
    with pytest.raises(ConfigError, match="twice"):
        create_backbones([TINY, TINY], weights="random")


def test_fused_extraction_reuses_each_backbones_cache(tmp_path):
    root = make_dataset(tmp_path / "data", n_per_class=4)
    first, second = (create_engine(b, device="cpu")
                     for b in create_backbones(f"{TINY}+test_resnet", weights="random"))
    caches = [open_cache(first), open_cache(second)]
    extract_dataset(scan_dataset(root), [first], [caches[0]], progress=False)
    shards = sorted(caches[0].root.glob("shard-*.h5"))
    _, report = extract_dataset(scan_dataset(root), [first, second],
                                [open_cache(first), open_cache(second)], progress=False)
    assert report.n_computed == 12  # computed for test_resnet only
    assert sorted(caches[0].root.glob("shard-*.h5")) == shards  # nothing new for the first


def test_cli_fused_train_predict(tmp_path, capsys):
    data = make_dataset(tmp_path / "colors", n_per_class=8)
    model = tmp_path / "m"
    assert main(["train", str(data), "--out", str(model), "--backbone", TINY,
                 "--backbone", "test_resnet", "--weights", "random", "-q"]) == 0
    config = json.loads((model / "graft.json").read_text())
    assert [b["name"] for b in config["backbones"]] == [TINY, "test_resnet"]
    assert [b["file"]["path"] for b in config["backbones"]] == [
        f"backbone-0-{TINY}.onnx", "backbone-1-test_resnet.onnx"]
    capsys.readouterr()
    assert main(["predict", str(model), str(data / "red"), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sum(line["predictions"][0]["label"] == "red" for line in lines) >= 7


# every registered backbone, but for the large foundation ones (their base and small siblings
# share the code path, at a tenth of the export time)
@pytest.mark.parametrize("name, layer", [(s.name, "pool5" if s.name == "vgg16" else None)
                                         for s in list_backbones() if "_large_" not in s.name])
def test_onnx_parity(name, layer, tmp_path):
    backbone = create_backbone(name, weights="random", layer=layer)
    engine = create_engine(backbone, device="cpu", cache_dir=tmp_path)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, *backbone.preprocess.size, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = ImageModel(backbone)(torch.from_numpy(images)).numpy()
    got = engine(images)
    assert np.abs(got - expected).max() <= 1e-3 * max(1.0, float(np.abs(expected).max()))


def test_keras_weights_only_where_mapped(tmp_path):
    weights = shared_path("weights", "squeezenet_weights_tf_dim_ordering_tf_kernels.h5")
    with pytest.raises(WeightsError, match="maps only for: squeezenet1_1"):
        create_backbone("mobilenetv2_100", weights=weights)
    (tmp_path / "x.h5").write_bytes(b"nope")
    with pytest.raises(WeightsError, match="not a readable HDF5"):
        create_backbone("squeezenet1_1", weights=tmp_path / "x.h5")


def test_fusion_rescales_each_backbone_to_unit_rms():
    from graft.features import fuse_features

    rng = np.random.default_rng(0)
    small, large = rng.normal(size=(4, 8)), 100 * rng.normal(size=(4, 2))
    np.testing.assert_array_equal(fuse_features([small]), small.astype(np.float32))
    fused = fuse_features([small, large])
    assert fused.shape == (4, 10)
    np.testing.assert_allclose(np.sqrt((fused[:, :8] ** 2).mean(1)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.sqrt((fused[:, 8:] ** 2).mean(1)), 1.0, rtol=1e-5)


def test_fused_feature_file_trains(tmp_path):
    data = make_dataset(tmp_path / "colors", n_per_class=8)
    features = tmp_path / "fused.h5"
    assert main(["extract", str(data), "--out", str(features), "--backbone",
                 f"{TINY}+test_resnet", "--weights", "random", "-q"]) == 0
    from graft.features import load_feature_file

    loaded = load_feature_file(features)
    assert [b["name"] for b in loaded.backbones] == [TINY, "test_resnet"]
    expected_dim = sum(b["num_features"] for b in loaded.backbones)
    assert loaded.features.shape == (24, expected_dim)
    assert main(["train", str(features), "--out", str(tmp_path / "m"), "-q"]) == 0
    config = json.loads((tmp_path / "m" / "graft.json").read_text())
    assert len(config["backbones"]) == 2 and config["fusion"] != "none"
