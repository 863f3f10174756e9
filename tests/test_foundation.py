"""Transformer backbones done right: token pooling, the input size, tagged names, checkpoints.

Each family is built by timm with random weights written to a file and passed as ``weights``
(no hub); graft's features are checked against a reference computed here from timm's own
``forward_features`` and the token slicing the recipe names, and against the exported ONNX graph.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from conftest import make_dataset

from graft.backbones import create_backbone, resolve_backbone_name
from graft.cli import main
from graft.errors import BackboneError, ConfigError
from graft.features import create_engine

# (timm name, pool): a class token, registers without one, an attention pool, EVA-02's rotary
# ViT, a ConvNeXt feature map
FAMILIES = [
    ("test_vit", "cls"), ("test_vit", "mean"), ("test_vit", "cls+mean"), ("test_vit", "avg"),
    ("test_vit2", "mean"), ("test_vit3", "map"), ("test_vit3", "mean"),
    ("eva02_tiny_patch14_224", "cls+mean"), ("test_convnext", "avg"), ("test_convnext", "max"),
]


def _weights_file(tmp_path, name: str, **kwargs) -> tuple[torch.nn.Module, str]:
    torch.manual_seed(1)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    return model, str(path)


def _reference(model: torch.nn.Module, x: torch.Tensor, pool: str) -> torch.Tensor:
    """What the recipe names, from timm's forward_features: never graft's code."""
    out = model.forward_features(x)
    if out.ndim == 4:  # a feature map
        return model.forward_head(out, pre_logits=True) if pool == "avg" else out.amax((2, 3))
    if pool == "avg":
        return model.forward_head(out, pre_logits=True)
    if pool == "map":
        return model.fc_norm(model.attn_pool(out))
    patches = out[:, model.num_prefix_tokens:]  # after the class and register tokens
    cls, mean = model.fc_norm(out[:, 0]), model.fc_norm(patches.mean(dim=1))
    return {"cls": cls, "mean": mean, "cls+mean": torch.cat([cls, mean], dim=1)}[pool]


def _normalized(backbone, images: np.ndarray) -> torch.Tensor:
    cfg = backbone.preprocess
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean, std = torch.tensor(cfg.mean).view(1, 3, 1, 1), torch.tensor(cfg.std).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize("name, pool", FAMILIES)
def test_features_equal_timms_own_tokens_and_the_onnx_graph(tmp_path, name, pool):
    model, path = _weights_file(tmp_path, name)
    backbone = create_backbone(name, weights=path, pool=pool)
    size = backbone.preprocess.input_size[1]
    images = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    x = _normalized(backbone, images)
    with torch.no_grad():
        expected = _reference(model, x, pool).numpy()
        got = backbone(x).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert backbone.num_features == expected.shape[1]
    onnx = create_engine(backbone, device="cpu", cache_dir=tmp_path / "cache")
    np.testing.assert_allclose(onnx(images), expected, atol=1e-4, rtol=1e-4)


def test_a_pool_that_does_not_fit_names_those_that_do():
    with pytest.raises(BackboneError, match=r"gives a feature map: use one of avg, max, avgmax"):
        create_backbone("test_convnext", weights="random", pool="cls")
    with pytest.raises(BackboneError, match=r"tokens: use one of avg, mean, map\.$"):
        create_backbone("test_vit3", weights="random", pool="cls")  # no class token
    with pytest.raises(BackboneError, match=r"use one of avg, cls, mean, cls\+mean\.$"):
        create_backbone("test_vit", weights="random", pool="flatten")
    with pytest.raises(ConfigError, match="pool must be one of"):
        create_backbone("test_vit", weights="random", pool="median")


def test_image_size_builds_a_transformer_for_it(tmp_path):
    """DINOv2 is built for 518 px; at 224 its position embeddings are resampled (a checkpoint
    for 518 loads), the token count follows, and the recorded recipe says 224."""
    model, path = _weights_file(tmp_path, "vit_small_patch14_reg4_dinov2")
    assert model.patch_embed.grid_size == (37, 37)
    backbone = create_backbone("vit_small_patch14_reg4_dinov2", weights=path, image_size=224,
                               pool="cls+mean")
    assert backbone.model.patch_embed.grid_size == (16, 16)
    assert backbone.config()["preprocess"]["input_size"] == [3, 224, 224]
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        tokens = backbone.model.forward_features(x)
    assert tokens.shape[1] == 1 + 4 + 16 * 16  # class, 4 registers, patches
    assert backbone.num_features == 2 * 384
    small = create_backbone("test_vit", weights="random", image_size=96)
    assert small.model.patch_embed.grid_size != create_backbone(
        "test_vit", weights="random").model.patch_embed.grid_size


def test_a_checkpoint_is_checked_on_the_part_graft_runs(tmp_path):
    """A classifier head of another shape (CLIP's projection), or none at all, is neither
    required nor compared unless the cut is the logits."""
    model, _ = _weights_file(tmp_path, "test_vit")
    state = model.state_dict()
    projected = {**state, "head.weight": torch.randn(512, state["head.weight"].shape[1]),
                 "head.bias": torch.randn(512)}
    headless = {k: v for k, v in state.items() if not k.startswith("head.")}
    for variant, tensors in (("projected", projected), ("headless", headless)):
        path = tmp_path / f"{variant}.pth"
        torch.save(tensors, path)
        backbone = create_backbone("test_vit", weights=str(path), pool="cls")
        again = create_backbone("test_vit", weights=str(path), pool="cls")
        assert backbone.weights_sha256 == again.weights_sha256  # the unused head is not random
        x = torch.randn(2, 3, 160, 160)
        with torch.no_grad():
            np.testing.assert_allclose(backbone(x).numpy(), _reference(model, x, "cls").numpy(),
                                       atol=1e-5)
    with pytest.raises(Exception, match="do not fit"):
        create_backbone("test_vit", weights=str(tmp_path / "headless.pth"), layer="logits")


def test_tagged_names_pick_the_tag(tmp_path):
    assert resolve_backbone_name("vit_small_patch14_dinov2.lvd142m") == \
        "vit_small_patch14_dinov2.lvd142m"
    assert resolve_backbone_name("lite0.in1k") == "tf_efficientnet_lite0.in1k"
    with pytest.raises(BackboneError, match=r"no pretrained tag 'nope'\. Its tags: .*lvd142m"):
        resolve_backbone_name("vit_small_patch14_dinov2.nope")
    tagged = create_backbone("vit_base_patch16_clip_224.openai", weights="random",
                             image_size=112)
    config = tagged.config()
    assert config["name"] == "vit_base_patch16_clip_224.openai"
    assert "pretrained_tag" not in config  # the name says it (recorded for untagged hub names)
    # the tag's preprocessing: OpenAI CLIP's mean, not ImageNet's
    assert config["preprocess"]["mean"][0] == pytest.approx(0.48145466)


def test_l2_normalized_features_are_recorded_and_cached_apart(tmp_path):
    plain = create_backbone("test_vit", weights="random", pool="cls")
    unit = create_backbone("test_vit", weights="random", pool="cls", normalize="l2")
    x = torch.randn(3, 3, 160, 160)
    with torch.no_grad():
        np.testing.assert_allclose(torch.linalg.norm(unit(x), dim=1).numpy(), 1.0, atol=1e-6)
    assert unit.config()["normalize"] == "l2" and "normalize" not in plain.config()
    keys = {create_engine(b, device="cpu", cache_dir=tmp_path).key for b in (plain, unit)}
    assert len(keys) == 2
    with pytest.raises(ConfigError, match="normalize must be one of none, l2"):
        create_backbone("test_vit", weights="random", normalize="l1")


def test_train_and_predict_a_transformer_through_its_onnx_graph(tmp_path, capsys):
    """graft train with a token pool, L2 features and another input size; the saved model
    (its ONNX graphs, no torch) predicts what the cached features gave."""
    data = make_dataset(tmp_path / "colors", n_per_class=6)
    model_dir = tmp_path / "vit-model"
    assert main(["train", str(data), "--out", str(model_dir), "--backbone", "test_vit",
                 "--weights", "random", "--pool", "cls+mean", "--normalize", "l2",
                 "--image-size", "96", "-q"]) == 0
    config = json.loads((model_dir / "graft.json").read_text())
    (recipe,) = config["backbones"]
    assert (recipe["pool"], recipe["normalize"]) == ("cls+mean", "l2")
    assert recipe["preprocess"]["input_size"] == [3, 96, 96]
    capsys.readouterr()
    image = sorted((data / "red").glob("*.jpg"))[0]
    assert main(["predict", str(model_dir), str(image), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["label"] == "red"


def test_a_preset_brings_its_recipe_and_options_override_it(tmp_path):
    """DINOv2's preset: 224 px (not timm's 518) and class token + mean patch token; SigLIP's:
    its attention pool, L2-normalized; what the user gives wins."""
    from graft.backbones import describe_backbone

    dino = create_backbone("vit_small_patch14_dinov2.lvd142m", weights="random")
    assert (dino.pool, dino.preprocess.input_size, dino.num_features) == (
        "cls+mean", (3, 224, 224), 768)
    assert dino.preprocess.crop_pct == 0.875  # resize to 256, crop 224: its linear eval
    siglip = describe_backbone("vit_base_patch16_siglip_224.webli")
    assert (siglip["pool"], siglip["normalize"], siglip["offline_weights"]) == ("map", "l2", False)
    mine = create_backbone("vit_small_patch14_dinov2.lvd142m", weights="random", pool="cls",
                           image_size=112)
    assert (mine.pool, mine.preprocess.input_size, mine.num_features) == (
        "cls", (3, 112, 112), 384)


def test_tta_flip_averages_an_image_and_its_mirror_in_the_graph(tmp_path, capsys):
    plain = create_backbone("test_vit", weights="random", pool="cls")
    flip = create_backbone("test_vit", weights="random", pool="cls", tta="flip")
    images = np.random.default_rng(3).integers(0, 256, (2, 160, 160, 3), dtype=np.uint8)
    x = _normalized(plain, images)
    with torch.no_grad():
        expected = ((plain(x) + plain(x.flip(3))) / 2).numpy()
        np.testing.assert_allclose(flip(x).numpy(), expected, atol=1e-6)
    engine = create_engine(flip, device="cpu", cache_dir=tmp_path / "cache")
    np.testing.assert_allclose(engine(images), expected, atol=1e-4)  # the exported graph
    assert engine.key != create_engine(plain, device="cpu", cache_dir=tmp_path / "cache").key
    assert flip.config()["tta"] == "flip" and "tta" not in plain.config()
    with pytest.raises(ConfigError, match="tta must be one of none, flip"):
        create_backbone("test_vit", weights="random", tta="crop")
    data = make_dataset(tmp_path / "colors", n_per_class=5)
    assert main(["train", str(data), "--out", str(tmp_path / "m"), "--backbone", "test_vit",
                 "--weights", "random", "--tta", "flip", "-q"]) == 0
    (recipe,) = json.loads((tmp_path / "m" / "graft.json").read_text())["backbones"]
    assert recipe["tta"] == "flip"
