"""Export: a trained checkpoint becomes a verifiable, versioned artifact.

Modules: towers (user fold-in tower, cold-start item tower), onnx_export (ONNX files + parity
checks), index (FAISS indexes + recall against exact search), evaluate (Recall@K), writer (the
pipeline), cli (`mrdib export`), bench (tower quality report on a real dataset).

Importing this package does not import torch, faiss or onnx; the writer loads them when called.
"""

from training.export.writer import ExportError, ExportOptions, ExportResult, export_checkpoint, run_export

__all__ = ["ExportError", "ExportOptions", "ExportResult", "export_checkpoint", "run_export"]
