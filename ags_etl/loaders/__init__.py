"""Loaders: write FeatureBatches to files or services, atomically."""
