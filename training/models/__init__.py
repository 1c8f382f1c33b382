"""Backbones (one per file) and the Recommender that combines a backbone with the MRdIB plug-in."""
