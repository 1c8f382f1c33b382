"""MRdIB: shared pieces of the product (the command line and the artifact schema).

`training` (torch) and `service` (no torch) both depend on this package; it must never
import torch or any service-only dependency at module level.
"""

__version__ = "0.1.0"
