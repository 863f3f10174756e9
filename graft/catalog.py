"""What graft offers, by name: defaults and the head list, without importing the training stack.

The CLI builds its options from these, so ``graft predict`` never imports torch or
scikit-learn just to print ``--help``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AUGMENTATIONS",
    "CLASS_WEIGHTS",
    "DEFAULT_AUGMENT",
    "DEFAULT_BACKBONE",
    "DEFAULT_HEAD",
    "DEFAULT_MAX_PIXELS",
    "DEVICES",
    "ENGINES",
    "EVALUATE_SPLITS",
    "HEAD_DESCRIPTIONS",
    "MODEL_PRECISIONS",
    "MAP_POOLS",
    "NORMALIZATIONS",
    "POOLS",
    "TOKEN_POOLS",
    "TTA",
    "PRECISIONS",
    "STREAMING_HEADS",
    "one_of",
    "parse_augment",
]

DEFAULT_BACKBONE = "tf_efficientnet_lite0"  # ImageNet weights ship with pip: works offline
DEFAULT_HEAD = "logreg"
AUGMENTATIONS = ("flip", "rotate", "crop", "color")
DEFAULT_AUGMENT = "flip,rotate,crop"
STREAMING_HEADS = ("logreg",)  # the heads that train out of core (graft.heads.streaming)
MAP_POOLS = ("avg", "max", "avgmax", "flatten")  # a feature map (N, C, H, W)
# a transformer's tokens (N, T, D): the class token, the patch tokens' mean (never class or
# register tokens), both (DINOv2's linear eval), or the model's attention pool (SigLIP)
TOKEN_POOLS = ("cls", "mean", "cls+mean", "map")
POOLS = (*MAP_POOLS, *TOKEN_POOLS)
NORMALIZATIONS = ("none", "l2")  # of the features, as a protocol asks (L2 for CLIP-style)
TTA = ("none", "flip")  # flip: the features of an image and its mirror image, averaged
# fp16/bf16 are torch autocast on CUDA; a model directory ships an fp32 or int8 graph
PRECISIONS = ("fp32", "int8", "fp16", "bf16")
MODEL_PRECISIONS = ("fp32", "int8")
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "torch")  # cuda:N: any device index
ENGINES = ("local", "ray")
EVALUATE_SPLITS = ("all", "train", "val", "test")
CLASS_WEIGHTS = ("auto", "none")
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS)

HEAD_DESCRIPTIONS = {
    "logreg": "Logistic regression, C grid-searched by 3-fold CV (default); trains out of core",
    "linear-svm": "Linear SVM (probabilities by sigmoid calibration)",
    "svm": "RBF-kernel SVM",
    "random-forest": "Random forest, 300 trees",
    "naive-bayes": "Gaussian naive Bayes",
    "knn": "k nearest neighbours (k=5, on standardized features)",
    "softmax": "One dense softmax layer in PyTorch (retrain.py's final layer)",
    "mlp": "Multi-layer perceptron in PyTorch (the seed's DNN)",
    "auto": "Pick the head with the best cross-validated accuracy on the training split",
}


def one_of(parameter: str, value: object, allowed: tuple[str, ...]) -> None:
    """Refuse ``value`` unless it is in ``allowed`` (``cuda:N`` stands for any device index)."""
    import difflib

    from graft.errors import ConfigError

    text = str(value)
    if value in allowed or ("cuda:N" in allowed and text[5:].isdigit()
                            and text.startswith("cuda:")):
        return
    close = difflib.get_close_matches(text, allowed, n=3)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise ConfigError(f"{parameter} must be one of {', '.join(allowed)}. Got {value!r}.{hint}",
                      parameter=parameter)


def parse_augment(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"flip,rotate,crop"`` -> a validated tuple (``"none"`` or empty: no augmentation)."""
    from graft.errors import ConfigError

    if value is None:
        return ()
    parts = value.split(",") if isinstance(value, str) else list(value)
    parts = [p.strip().lower() for p in parts if p.strip() and p.strip().lower() != "none"]
    unknown = [p for p in parts if p not in AUGMENTATIONS]
    if unknown:
        raise ConfigError(
            f"Unknown augmentation(s) {unknown} in augment {value!r}. Expected a "
            f"comma-separated list of {', '.join(AUGMENTATIONS)} (or 'none').", parameter="augment"
        )
    return tuple(dict.fromkeys(parts))
