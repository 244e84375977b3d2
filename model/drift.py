"""Population stability index (PSI) of each feature against bins taken from the training data.

The bins are decided once, at training time, from the training rows (deciles of the non-empty values,
plus one bin for empty values) and saved in the model card, so every later comparison uses the same
bins: PSI = sum over bins of (actual - expected) * ln(actual / expected).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

QUANTILES = np.linspace(0.1, 0.9, 9)
# Shares are floored so that an empty bin on one side gives a large but finite PSI.
FLOOR = 1e-4


def _shares(values: pd.Series, edges: list[float]) -> tuple[list[float], float]:
    present = values.dropna().to_numpy(dtype=float)
    total = max(len(values), 1)
    counts = np.bincount(np.searchsorted(np.asarray(edges), present, side="left"), minlength=len(edges) + 1)
    return [float(c) / total for c in counts], float(values.isna().sum()) / total


def reference(frame: pd.DataFrame, features: list[str]) -> dict[str, Any]:
    """Per feature: the bin edges (values <= edge fall left of it) and the training shares per bin."""
    result = {}
    for name in features:
        present = frame[name].dropna().to_numpy(dtype=float)
        edges = sorted(set(np.quantile(present, QUANTILES).tolist())) if len(present) else []
        shares, missing = _shares(frame[name], edges)
        result[name] = {"edges": edges, "shares": shares, "missing_share": missing}
    return result


def psi(expected: list[float], actual: list[float]) -> float:
    e = np.maximum(np.asarray(expected, dtype=float), FLOOR)
    a = np.maximum(np.asarray(actual, dtype=float), FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def drift(frame: pd.DataFrame, reference_bins: dict[str, Any]) -> dict[str, float]:
    """PSI of each feature of `frame` against the saved training bins (empty values are a bin)."""
    result = {}
    for name, bins in reference_bins.items():
        shares, missing = _shares(frame[name], bins["edges"])
        result[name] = psi([*bins["shares"], bins["missing_share"]], [*shares, missing])
    return result
