"""Transformers: pure FeatureBatch → FeatureBatch steps (reproject, clip, fields)."""
