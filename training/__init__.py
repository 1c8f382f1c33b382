"""Offline half of MRdIB: data, models, training, evaluation and export."""
