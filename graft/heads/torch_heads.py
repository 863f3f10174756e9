"""Small PyTorch heads with the scikit-learn estimator contract: a softmax layer and an MLP."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import unique_labels
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from graft.errors import ConfigError

__all__ = ["TorchMLPClassifier", "TorchSoftmaxClassifier"]


class _TorchHead(ClassifierMixin, BaseEstimator):
    """Shared training loop: standardized inputs, AdamW, mini-batches, cross-entropy.

    The input standardization is part of the network, so the exported ONNX graph takes raw
    features, like the scikit-learn pipelines do.
    """

    def _build(self, n_features: int, n_classes: int) -> nn.Module:  # pragma: no cover
        raise NotImplementedError

    def _check_params(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(
                    f"The '{name}' parameter of {type(self).__name__} must be an int >= 1. "
                    f"Got {value!r} instead."
                )
        for name in ("lr",):
            if not getattr(self, name) > 0:
                raise ConfigError(
                    f"The '{name}' parameter of {type(self).__name__} must be > 0. "
                    f"Got {getattr(self, name)!r} instead."
                )

    def fit(self, X, y):
        self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float32)
        self.classes_ = unique_labels(y)
        y_index = np.searchsorted(self.classes_, y)
        generator = torch.Generator().manual_seed(int(self.random_state or 0))
        torch.manual_seed(int(self.random_state or 0))
        mean = X.mean(axis=0)
        scale = X.std(axis=0)
        scale[scale < 1e-6] = 1.0
        network = self._build(X.shape[1], len(self.classes_))
        model = nn.Sequential(_Standardize(mean, scale), network)
        optimizer = torch.optim.AdamW(network.parameters(), lr=self.lr,
                                      weight_decay=self.weight_decay)
        loss_fn = nn.CrossEntropyLoss()
        inputs = torch.from_numpy(X)
        targets = torch.from_numpy(y_index.astype(np.int64))
        n = len(inputs)
        self.loss_curve_ = []
        with torch.enable_grad():
            for _ in range(self.epochs):
                model.train()
                order = torch.randperm(n, generator=generator)
                total = 0.0
                for start in range(0, n, self.batch_size):
                    batch = order[start: start + self.batch_size]
                    optimizer.zero_grad()
                    loss = loss_fn(model(inputs[batch]), targets[batch])
                    loss.backward()
                    optimizer.step()
                    total += loss.item() * len(batch)
                self.loss_curve_.append(total / n)
        self.model_ = model.eval()
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "model_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        with torch.no_grad():
            return torch.softmax(self.model_(torch.from_numpy(X)), dim=1).numpy()

    def predict(self, X) -> np.ndarray:
        probabilities = self.predict_proba(X)  # checks fitted before classes_ is touched
        return self.classes_[np.argmax(probabilities, axis=1)]

    def to_onnx_module(self) -> nn.Module:
        """The fitted network with softmax: raw features in, class probabilities out."""
        check_is_fitted(self, "model_")
        return nn.Sequential(self.model_, nn.Softmax(dim=1)).eval()


class _Standardize(nn.Module):
    def __init__(self, mean: np.ndarray, scale: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(mean.astype(np.float32)))
        self.register_buffer("scale", torch.from_numpy(scale.astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


class TorchSoftmaxClassifier(_TorchHead):
    """One dense layer + softmax on the features (TF retrain.py's final layer).

    Args:
        epochs: Passes over the training data.
        lr: AdamW learning rate.
        batch_size: Mini-batch size.
        weight_decay: AdamW weight decay (L2 regularization).
        dropout: Dropout on the input features during training.
        random_state: Seed for initialization and shuffling.
    """

    def __init__(self, *, epochs: int = 100, lr: float = 3e-3, batch_size: int = 64,
                 weight_decay: float = 1e-2, dropout: float = 0.2, random_state: int | None = 0):
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.random_state = random_state

    def _build(self, n_features: int, n_classes: int) -> nn.Module:
        return nn.Sequential(nn.Dropout(self.dropout), nn.Linear(n_features, n_classes))


class TorchMLPClassifier(_TorchHead):
    """A small multi-layer perceptron ("DNN") head: dense-ReLU-dropout blocks, then softmax.

    Args:
        hidden_units: Width of each hidden layer.
        epochs: Passes over the training data.
        lr: AdamW learning rate.
        batch_size: Mini-batch size.
        weight_decay: AdamW weight decay.
        dropout: Dropout after each hidden layer (and on the input features).
        random_state: Seed for initialization and shuffling.
    """

    def __init__(self, *, hidden_units: tuple[int, ...] = (512,), epochs: int = 100,
                 lr: float = 1e-3, batch_size: int = 64, weight_decay: float = 1e-2,
                 dropout: float = 0.3, random_state: int | None = 0):
        self.hidden_units = hidden_units
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.random_state = random_state

    def _build(self, n_features: int, n_classes: int) -> nn.Module:
        layers: list[nn.Module] = [nn.Dropout(self.dropout / 2)]
        width = n_features
        for units in self.hidden_units:
            layers += [nn.Linear(width, int(units)), nn.ReLU(), nn.Dropout(self.dropout)]
            width = int(units)
        layers.append(nn.Linear(width, n_classes))
        return nn.Sequential(*layers)
