"""Which vectors a model may serve: finite, and short enough that no score can overflow.

Every score the service sends is an inner product of two vectors (user . item, or a component of it), at most
``|u| |i|`` in magnitude. Checksums and finiteness alone let through an artifact whose vectors are huge but
finite: its scores overflowed float32 to infinity, which JSON cannot carry, and every request failed. With
every vector's L2 norm at most `MAX_VECTOR_NORM` (1e6), no score exceeds 1e12: far inside float32 (3.4e38)
and exact enough in JSON, whatever the dimension. Trained embeddings have norms of order 1 to 100, so the
bound only refuses broken or hostile vectors.

The same check applies to what the artifact stores (`mrdib artifact verify`, and the service at load), to
what its towers produce (a dry run at load; the item tower's output for PUT /items; the user tower's output
per request), so a vector that passed nowhere reaches a response.
"""

from __future__ import annotations

import numpy as np

MAX_VECTOR_NORM = 1e6


def row_norms(vectors: np.ndarray) -> np.ndarray:
    """L2 norm of each row (of the last axis), in float64 so that the norm of a huge row does not overflow."""
    v = np.asarray(vectors, dtype=np.float64)
    return np.sqrt(np.einsum("...i,...i->...", v, v))


def vector_problem(vectors: np.ndarray, first_row: int = 0) -> str | None:
    """Why `vectors` cannot be served; None when it can. For a matrix [n, d] the message names the first bad row
    (counted from `first_row`: callers check big matrices in blocks); for one vector [d] it names none."""
    v = np.asarray(vectors)
    one = v.ndim == 1
    flat = v.reshape(1, -1) if one else v.reshape(-1, v.shape[-1])
    where = (lambda r: "") if one else (lambda r: f" in row {first_row + r}")
    finite = np.isfinite(flat).all(axis=1)
    if not finite.all():
        return "NaN or inf" + where(int(np.argmin(finite)))
    norms = row_norms(flat)
    if (norms > MAX_VECTOR_NORM).any():
        row = int(np.argmax(norms))
        return (f"norm {norms[row]:.3g}{where(row)}, above the servable bound {MAX_VECTOR_NORM:.0e} "
                "(scores could overflow float32 and JSON)")
    return None
