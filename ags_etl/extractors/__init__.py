"""Extractors: sources of FeatureBatches (the ArcGIS layer extractor, and plugins)."""
