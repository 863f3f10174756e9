"""Features: fast engines (ONNX Runtime / torch), the crash-safe HDF5 cache, and feature files."""

from graft.bundle.fusion import FUSION, fuse_features
from graft.features.engine import (
    FeatureEngine,
    OnnxEngine,
    TorchEngine,
    backbone_key,
    create_engine,
    export_backbone_onnx,
    fused_key,
)
from graft.features.extract import (
    ExtractionReport,
    extract_dataset,
    extract_feature_set,
    extract_to_file,
    extract_views,
    open_cache,
    view_key,
)
from graft.features.store import (
    CachedFeatures,
    FeatureCache,
    FeatureSet,
    cache_key,
    load_feature_file,
)

__all__ = [
    "FUSION",
    "CachedFeatures",
    "ExtractionReport",
    "FeatureCache",
    "FeatureEngine",
    "FeatureSet",
    "OnnxEngine",
    "TorchEngine",
    "backbone_key",
    "cache_key",
    "create_engine",
    "export_backbone_onnx",
    "extract_dataset",
    "extract_feature_set",
    "extract_to_file",
    "extract_views",
    "fuse_features",
    "fused_key",
    "load_feature_file",
    "open_cache",
    "view_key",
]
