"""Evaluation maths and feature backbones. Pure numpy/PyTorch."""
from gan_core.metrics.frechet import FeatureStats, MetricError, feature_stats, fid_from_stats, frechet_distance

__all__ = ["FeatureStats", "MetricError", "feature_stats", "fid_from_stats", "frechet_distance"]
