"""The backbone registry, cuts, weights loading (offline, file, URL) and real ImageNet predictions."""

from __future__ import annotations

import functools
import http.server
import threading

import numpy as np
import pytest
import torch
from conftest import TINY, shared_path

from graft.backbones import ImageModel, create_backbone, list_backbones, resolve_backbone_name
from graft.backbones.weights import load_state_dict_file
from graft.inference import preprocess
from graft.errors import BackboneError, ConfigError, WeightsError

# ImageNet-1k class indices
BEE, ANT, DAISY = 309, 310, 985


def test_registry_and_aliases():
    names = {spec.name for spec in list_backbones()}
    assert {"tf_efficientnet_lite0", "mobilenetv2_100", "resnet50"} <= names
    assert resolve_backbone_name("efficientnet_lite0") == "tf_efficientnet_lite0"
    assert resolve_backbone_name(TINY) == TINY


def test_unknown_backbone_lists_close_matches():
    with pytest.raises(BackboneError, match="Did you mean: resnet50"):
        resolve_backbone_name("resnt50")


@pytest.mark.parametrize(
    "layer, pool, dim",
    [("pool", "avg", 256), ("stage2", "avg", 32), ("blocks.2", "max", 32),
     ("stage2", "avgmax", 64), ("logits", "avg", 1000)],
)
def test_tiny_backbone_cuts(layer, pool, dim):
    backbone = create_backbone(TINY, weights="random", layer=layer, pool=pool)
    assert backbone.num_features == dim
    out = backbone(torch.zeros(2, *backbone.preprocess.input_size))
    assert out.shape == (2, dim)


def test_unknown_layer_lists_valid_ones():
    with pytest.raises(BackboneError, match=r"Valid layers: pool, logits, blocks.0"):
        create_backbone(TINY, weights="random", layer="fc9")
    with pytest.raises(ConfigError, match="pool"):
        create_backbone(TINY, weights="random", pool="median")


def test_random_weights_are_reproducible(tiny_backbone):
    again = create_backbone(TINY, weights="random")
    assert again.weights_sha256 == tiny_backbone.weights_sha256


def test_no_weights_offline_fails_with_fix():
    with pytest.raises(WeightsError, match="weights=PATH") as error:
        create_backbone("resnet18")
    assert "--" not in str(error.value) and error.value.parameters == ("weights",)


def test_weights_that_do_not_fit(tmp_path):
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "w.pth")
    with pytest.raises(WeightsError, match="do not fit"):
        create_backbone(TINY, weights=tmp_path / "w.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="Cannot read weights"):
        create_backbone(TINY, weights=tmp_path / "junk.pth")


@pytest.mark.parametrize("name, content", [
    ("junk.pth", bytes(range(256)) * 8),
    ("text.pth", b"these are not weights\n"),
    ("junk.safetensors", bytes(range(256)) * 8),
    ("text.safetensors", b"these are not weights\n"),
    ("module.pth", None),
])
def test_unreadable_weights_file_message_is_short_and_safe(tmp_path, name, content):
    path = tmp_path / name
    if content is None:  # a whole pickled module: loading it could run code
        torch.save({"model": torch.nn.Linear(2, 2)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(WeightsError) as info:
        load_state_dict_file(path)
    message = str(info.value)
    assert str(path) in message and "check the weights=path given" in message.lower()
    assert info.value.naming({"weights": "--weights"}).lower().count("check the --weights path given")
    # torch's own text advises weights_only=False, which lets the file run code: never shown.
    assert "weights_only" not in message and "\n" not in message
    assert len(message) < 400


def test_safetensors_and_url_weights(tmp_path, tiny_backbone):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in tiny_backbone.model.state_dict().items()}
    save_file(state, tmp_path / "tiny.safetensors")
    loaded = create_backbone(TINY, weights=tmp_path / "tiny.safetensors")
    assert loaded.weights_sha256 == tiny_backbone.weights_sha256

    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "tiny.pth")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/tiny.pth"
        downloaded = create_backbone(TINY, weights=url, cache_dir=tmp_path / "cache")
        assert downloaded.weights_sha256 == tiny_backbone.weights_sha256
        assert list((tmp_path / "cache" / "weights").glob("*tiny.pth"))
        with pytest.raises(WeightsError, match="Cannot download"):
            create_backbone(TINY, weights=url.replace("tiny.pth", "missing.pth"),
                            cache_dir=tmp_path / "cache")
    finally:
        server.shutdown()


def _imagenet_top1(name, weights, paths):
    model = ImageModel(create_backbone(name, layer="logits", weights=weights)).eval()
    images = np.stack([preprocess(p, model.backbone.preprocess)[0] for p in paths])
    with torch.no_grad():
        return model(torch.from_numpy(images)).argmax(1).tolist()


def _photos():
    hymenoptera = shared_path("datasets", "hymenoptera", "val")
    bees = sorted((hymenoptera / "bees").glob("*.jpg"))[1:4]
    ants = sorted((hymenoptera / "ants").glob("*.jpg"))[1:4]
    daisies = sorted(shared_path("datasets", "flowers17", "daisy").glob("*.jpg"))[:3]
    return bees + ants + daisies, [BEE] * 3 + [ANT] * 3 + [DAISY] * 3


@pytest.mark.slow
def test_default_backbone_offline_imagenet_predictions():
    """The lukemelas -> timm key mapping is right only if real photos get their ImageNet class."""
    backbone = create_backbone()
    assert backbone.weights_source.startswith("package:")
    assert backbone.num_features == 1280 and backbone.preprocess.mean == (0.5, 0.5, 0.5)
    paths, expected = _photos()
    predicted = _imagenet_top1(backbone.name, None, paths)
    assert sum(p == e for p, e in zip(predicted, expected)) >= 8, predicted


@pytest.mark.slow
def test_torchvision_mobilenet_v2_weights_imagenet_predictions():
    path = shared_path("weights", "mobilenet_v2-b0353104.pth")
    backbone = create_backbone("mobilenet_v2", weights=path)
    assert backbone.num_features == 1280
    paths, expected = _photos()
    predicted = _imagenet_top1(backbone.name, path, paths)
    assert sum(p == e for p, e in zip(predicted, expected)) >= 8, predicted


@pytest.mark.slow
def test_keras_squeezenet_weights_imagenet_predictions():
    """HWIO->OIHW, the fire-module order and Caffe-style BGR mean are right only if this passes."""
    path = shared_path("weights", "squeezenet_weights_tf_dim_ordering_tf_kernels.h5")
    backbone = create_backbone("squeezenet", weights=path)
    assert backbone.num_features == 512 and backbone.preprocess.channel_order == "BGR"
    paths, expected = _photos()
    predicted = _imagenet_top1(backbone.name, path, paths)
    assert sum(p == e for p, e in zip(predicted, expected)) >= 7, predicted
