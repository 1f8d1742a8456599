"""Small numeric helpers shared by tests."""

import numpy as np


def rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref|: the parity measure of the tolerance policy."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())
