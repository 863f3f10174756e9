"""What graft offers, by name: defaults and the head list, without importing the training stack.

The CLI builds its options from these, so ``graft predict`` never imports torch or
scikit-learn just to print ``--help``.
"""

from __future__ import annotations

__all__ = ["DEFAULT_BACKBONE", "DEFAULT_HEAD", "HEAD_DESCRIPTIONS", "POOLS", "STREAMING_HEADS"]

DEFAULT_BACKBONE = "tf_efficientnet_lite0"  # ImageNet weights ship with pip: works offline
DEFAULT_HEAD = "logreg"
STREAMING_HEADS = ("logreg",)  # the heads that train out of core (graft.heads.streaming)
POOLS = ("avg", "max", "avgmax", "flatten")

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
