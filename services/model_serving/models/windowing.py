"""Splitting a long token sequence into model-sized windows, and combining the windows' scores.

Pure functions (no model, no torch) so that training, validation and serving share
exactly one implementation and it can be tested on its own.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def plan_windows(n_tokens: int, window: int, overlap: int, max_windows: int) -> list[int]:
    """Start offsets of the windows that cover `n_tokens` content tokens.

    Windows are `window` tokens long and consecutive windows share `overlap` tokens, so a
    phrase cut at one boundary is seen whole in the neighbouring window. The last window
    is aligned to the end of the text, so every window of a long text is full. When more
    than `max_windows` windows would be needed, `max_windows` of them are chosen evenly
    spread over the whole document (first and last included) rather than only the first
    ones: the topic of a long document shows across it, not only in its opening.
    """
    if window < 1:
        raise ValueError("window must be at least 1 token")
    if not 0 <= overlap < window:
        raise ValueError("overlap must be at least 0 and smaller than the window")
    if max_windows < 1:
        raise ValueError("max_windows must be at least 1")
    if n_tokens <= window:
        return [0]
    step = window - overlap
    count = math.ceil((n_tokens - window) / step) + 1
    starts = [min(i * step, n_tokens - window) for i in range(count)]
    if count <= max_windows:
        return starts
    if max_windows == 1:
        return [starts[0]]
    picks = [round(i * (count - 1) / (max_windows - 1)) for i in range(max_windows)]
    return [starts[p] for p in picks]


def split_windows(token_ids: Sequence[int], window: int, overlap: int, max_windows: int) -> list[list[int]]:
    """The content token ids of each planned window (without special tokens)."""
    ids = list(token_ids)
    return [ids[s:s + window] for s in plan_windows(len(ids), window, overlap, max_windows)]


def aggregate(window_probs: np.ndarray, owners: Sequence[int], n_documents: int) -> np.ndarray:
    """Mean of the per-window label probabilities of each document.

    `window_probs` is (n_windows, n_labels); `owners[i]` is the document of window i.
    The mean treats every window as one vote with its confidence: one confident but
    off-topic passage (a quoted article, a signature) cannot override the rest of the
    document as it would with `max`, and the result is still a probability
    distribution. Windows are all full-length (see `plan_windows`), so they weigh the same.
    """
    owners_arr = np.asarray(owners, dtype=np.int64)
    if window_probs.shape[0] != owners_arr.shape[0]:
        raise ValueError("one owner per window is needed")
    sums = np.zeros((n_documents, window_probs.shape[1]), dtype=np.float64)
    np.add.at(sums, owners_arr, window_probs.astype(np.float64))
    counts = np.bincount(owners_arr, minlength=n_documents).astype(np.float64)
    if np.any(counts == 0):
        raise ValueError("every document needs at least one window")
    return sums / counts[:, None]
