"""Data layer: one in-memory dataset type and the loaders that build it."""

from training.data.dataset import TEST, TRAIN, VALID, DataError, InteractionDataset

__all__ = ["TEST", "TRAIN", "VALID", "DataError", "InteractionDataset"]
