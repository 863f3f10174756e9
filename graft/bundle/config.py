"""The typed contents of ``graft.json``: read and written here, used by attribute everywhere else.

Each dataclass reads its JSON with ``from_dict`` and writes it with ``to_dict``. A new field gets
a default, so older files still load; a field that changes what the graphs compute also bumps
:data:`MODEL_FORMAT_VERSION`, so an older graft refuses the file rather than misreading it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from graft.data.preprocess import PreprocessConfig
from graft.errors import GraftError, ModelError

__all__ = [
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "BackboneRecipe",
    "FileSpec",
    "HeadSpec",
    "ModelConfig",
    "SplitSpec",
    "TrainingSpec",
]

MODEL_FORMAT = "graft-model"
# 2: the split is its own object ("split"), and every backbone states its precision.
# 1: the split lived in training.split_source / training.split_params.
MODEL_FORMAT_VERSION = 2

INPUTS = {
    "images": "uint8 (N, H, W, 3) RGB per backbone, resized and cropped as its 'preprocess' says; "
              "each backbone graph normalizes; the head takes the backbones' features "
              "concatenated in order",
}


def _known(cls: type, data: Any, what: str, renamed: dict[str, str] | None = None
           ) -> dict[str, Any]:
    """``data``'s fields as ``cls``'s keyword arguments; unknown fields are refused, because a
    newer graft may have stored something that changes the predictions."""
    if not isinstance(data, dict):
        raise ModelError(f"The {what} in graft.json must be a JSON object. "
                         f"Got {type(data).__name__}.")
    renamed = renamed or {}
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {renamed.get(key, key): value for key, value in data.items()}
    unknown = sorted(key for key in data if renamed.get(key, key) not in names)
    if unknown:
        raise ModelError(f"The {what} has field(s) {unknown} this graft does not know: it was "
                         f"written by a newer graft. Upgrade graft to read it.")
    return kwargs


def _build(cls: type, kwargs: dict[str, Any], what: str) -> Any:
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ModelError(f"The {what} is incomplete: {exc}.") from exc


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if value is not None}


class _Record:
    """A part of ``graft.json``: a dataclass read from and written to a JSON object."""

    WHAT: ClassVar[str] = "record"  # how messages name it

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(dataclasses.asdict(self))  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: Any) -> Any:
        return _build(cls, _known(cls, data, cls.WHAT), cls.WHAT)


@dataclass(frozen=True)
class FileSpec(_Record):
    """A file of the model directory, checked against its SHA-256 on load."""

    WHAT: ClassVar[str] = "file entry"

    path: str
    sha256: str
    format: str | None = None  # how to read a file that is not ONNX


@dataclass(frozen=True)
class BackboneRecipe:
    """How one backbone turns an image into features (the backbone registry's entries are
    :class:`graft.backbones.BackboneSpec`; this is one built backbone, as stored).

    Attributes:
        weights: What ``create_backbone`` takes to build it again (a tag such as ``random``, a
            file or a URL); None for weights that exist only in this graph (fine-tuned).
        weights_sha256: The weights' hash, to check a rebuild got the same ones.
        weights_source: Where the weights came from, for people.
        precision: ``fp32``, ``int8`` (the graph quantized), or ``fp16``/``bf16`` (feature
            files extracted with autocast on CUDA).
        feature_key: The feature cache's key for this graph (in a model directory).
        file: The graph (in a model directory).
        normalize: How the features are scaled after pooling (``l2``: unit length).
        tta: Test-time augmentation inside the graph (``flip``: image and mirror averaged).
        pretrained_tag: The timm pretrained tag whose preprocessing (and hub weights) it took.
    """

    name: str
    layer: str | None
    num_features: int
    preprocess: PreprocessConfig
    pool: str = "avg"
    weights: str | None = None
    weights_sha256: str | None = None
    weights_source: str | None = None
    precision: str = "fp32"
    feature_key: str | None = None
    file: FileSpec | None = None
    normalize: str = "none"
    pretrained_tag: str | None = None
    tta: str = "none"

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["preprocess"] = self.preprocess.to_dict()
        data["file"] = None if self.file is None else self.file.to_dict()
        for key in ("feature_key", "file", "pretrained_tag"):  # only when there is one
            if data[key] is None:
                del data[key]
        for key in ("normalize", "tta"):  # "none": as the formats before them wrote it
            if data[key] == "none":
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> BackboneRecipe:
        kwargs = _known(cls, data, "backbone recipe")
        try:
            kwargs["preprocess"] = PreprocessConfig.from_dict(kwargs.get("preprocess") or {})
        except (GraftError, TypeError, ValueError) as exc:
            raise ModelError(f"The backbone recipe's preprocess is invalid: {exc}") from exc
        if kwargs.get("file") is not None:
            kwargs["file"] = FileSpec.from_dict(kwargs["file"])
        if "num_features" in kwargs:
            kwargs["num_features"] = int(kwargs["num_features"])
        return _build(cls, kwargs, "backbone recipe")


@dataclass(frozen=True)
class HeadSpec:
    """The head: its name in ``graft heads``, its estimator and how it was chosen and fitted.

    Attributes:
        class_name: The estimator's class (``"class"`` in the JSON).
        search_rows, best_params, cv_best_score, cv_results: The hyper-parameter search.
        auto: Each head's cross-validated score, when ``--head auto`` chose it.
        out_of_core: How it was trained from the feature cache in chunks, if it was.
    """

    name: str
    class_name: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    fit_seconds: float | None = None
    search_rows: int | None = None
    best_params: dict[str, Any] | None = None
    cv_best_score: float | None = None
    cv_results: list[dict[str, Any]] | None = None
    auto: dict[str, dict[str, float]] | None = None
    out_of_core: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = _drop_none(dataclasses.asdict(self))
        return {"name": data.pop("name"), "class": data.pop("class_name", None), **data}

    @classmethod
    def from_dict(cls, data: Any) -> HeadSpec:
        kwargs = _known(cls, data, "head", renamed={"class": "class_name"})
        return _build(cls, kwargs, "head")


@dataclass(frozen=True)
class SplitSpec:
    """How the training data was split, so ``graft evaluate`` can recompute the test split.

    Attributes:
        source: ``hash`` (drawn from the parameters below), ``folders`` (the data's own split
            folders), ``caller`` (given by the caller, as with ``ImageClassifier.fit``) or ``""``.
    """

    source: str = ""
    test_size: float | None = None
    val_size: float | None = None
    seed: int | None = None
    group_regex: str | None = None

    @property
    def params(self) -> dict[str, Any]:
        """The parameters :func:`graft.data.assign_splits` takes (those recorded)."""
        return {key: value for key, value in dataclasses.asdict(self).items()
                if key != "source" and value is not None}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> SplitSpec:
        return _build(cls, _known(cls, data, "split"), "split")

    @classmethod
    def from_params(cls, source: str, params: dict[str, Any] | None) -> SplitSpec:
        """From a dataset's ``split_source`` and ``split_params``."""
        return _build(cls, {"source": source or "",
                            **_known(cls, dict(params or {}), "split parameters")},
                      "split")


@dataclass(frozen=True)
class TrainingSpec(_Record):
    """What the model was trained on (provenance; the split is :class:`SplitSpec`).

    Attributes:
        source: What training was given: a folder, CSV, URI or feature file.
        data: The images' folder or URI (a feature file's, for one).
        counts: Images per split and class.
    """

    WHAT: ClassVar[str] = "training record"

    source: str | None = None
    data: str | None = None
    counts: dict[str, dict[str, int]] | None = None
    n_skipped: int | None = None


@dataclass(frozen=True)
class ModelConfig:
    """``graft.json``: everything to rebuild and describe a model directory.

    Attributes:
        labels: Class names, in probability-column order.
        backbones: One recipe per (fused) backbone, in feature order.
        head_file: The head graph: features -> ``probabilities``.
        content_hashes_file: Content hashes of the images the model was fitted on.
        fusion: How fused backbones' features are combined (``none`` for one backbone).
        versions: The libraries that wrote it.
        format_version: The format it was read from (it is written in the current one).
    """

    labels: list[str]
    backbones: list[BackboneRecipe]
    head: HeadSpec
    head_file: FileSpec
    split: SplitSpec = field(default_factory=SplitSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    content_hashes_file: FileSpec | None = None
    fusion: str = "none"
    created: str = ""
    task: str = "image-classification"
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = MODEL_FORMAT_VERSION

    @property
    def files(self) -> list[FileSpec]:
        """Every file the directory must hold, graphs first."""
        extra = [] if self.content_hashes_file is None else [self.content_hashes_file]
        return [b.file for b in self.backbones if b.file is not None] + [self.head_file, *extra]

    @property
    def backbone_names(self) -> str:
        return "+".join(backbone.name for backbone in self.backbones)

    def to_dict(self) -> dict[str, Any]:
        files = {"head": self.head_file.to_dict()}
        if self.content_hashes_file is not None:
            files["train_fingerprints"] = self.content_hashes_file.to_dict()
        return {
            "format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION,
            "created": self.created, "task": self.task, "labels": list(self.labels),
            "backbones": [backbone.to_dict() for backbone in self.backbones],
            "fusion": self.fusion, "head": self.head.to_dict(), "inputs": INPUTS,
            "files": files, "split": self.split.to_dict(), "training": self.training.to_dict(),
            "versions": dict(self.versions),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "graft.json") -> ModelConfig:
        """Read any format version up to :data:`MODEL_FORMAT_VERSION`.

        Raises:
            ModelError: Not a graft model config, from a newer graft, or malformed.
        """
        if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ModelError(f"{where} is not a graft model config (format {found!r}).")
        version = data.get("format_version", 1)  # the first graft wrote none
        if not isinstance(version, int) or version < 1:
            raise ModelError(f"{where} has an invalid format_version {version!r}: it must be "
                             f"an integer from 1 to {MODEL_FORMAT_VERSION}.")
        if version > MODEL_FORMAT_VERSION:
            raise ModelError(
                f"{where} was saved by a newer graft (model format {version}; this graft reads "
                f"formats 1 to {MODEL_FORMAT_VERSION}). Upgrade graft to load it.")
        data = _upgrade_v1(data) if version == 1 else dict(data)
        try:
            files, backbones = data.pop("files") or {}, data.pop("backbones")
            head, labels = data.pop("head"), data.pop("labels")
        except KeyError as exc:
            raise ModelError(f"{where} is incomplete: it has no {exc.args[0]!r}.") from exc
        for key in ("format", "inputs"):  # constants, written again by to_dict
            data.pop(key, None)
        kwargs = _known(cls, data, "model config")
        kwargs.update(
            labels=[str(label) for label in labels],
            backbones=[BackboneRecipe.from_dict(backbone) for backbone in backbones],
            head=HeadSpec.from_dict(head),
            head_file=FileSpec.from_dict(files.get("head")),
            content_hashes_file=(FileSpec.from_dict(files["train_fingerprints"])
                                 if files.get("train_fingerprints") else None),
            split=SplitSpec.from_dict(kwargs.get("split", {})),
            training=TrainingSpec.from_dict(kwargs.get("training", {})),
        )
        if not all(backbone.file is not None for backbone in kwargs["backbones"]):
            raise ModelError(f"{where} is incomplete: a backbone has no graph file.")
        return _build(cls, kwargs, "model config")


def _upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Format 1 as format 2: the split moves out of ``training``."""
    data = dict(data)
    training = dict(data.get("training") or {})
    source = training.pop("split_source", "")
    params = training.pop("split_params", None)
    data["training"] = training
    data["split"] = SplitSpec.from_params(source, params).to_dict()
    return data
