"""What results are keyed by and how their per-example bits are kept: pure functions, no store.

Torch-free: the evaluation (``advtui.engine``) encodes what it measured with these, the result
store (``advtui.store.results``) decodes it, and neither needs the other for it.

- ``file_digest``: sha256 of a checkpoint file, 16 hex digits.
- ``mask_to_hex`` / ``hex_to_mask``: per-example booleans as the hex of their packed bits.
- ``ids_to_hex`` / ``ids_digest``: the example indices a result was measured on, as a hex
  bitmap over the split and as a sha256 (16 hex digits).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np


def file_digest(path: Path) -> str:
    """sha256 of a checkpoint file, 16 hex digits: what its results are keyed by."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


# -- per-example masks, stored compactly -------------------------------------------------------------
def mask_to_hex(mask: Any) -> str:
    """Per-example booleans (a sequence, an array, or a torch tensor on any device) as hex."""
    if hasattr(mask, "detach"):  # a torch tensor, recognized without importing torch
        mask = mask.detach().cpu().numpy()
    return np.packbits(np.asarray(mask).astype(bool)).tobytes().hex()


def hex_to_mask(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:n].astype(bool)


# -- the examples a result rests on -------------------------------------------------------------------
def ids_to_hex(ids: Any, split_size: int) -> str:
    """Example indices (into a split of ``split_size``) as a hex bitmap."""
    bitmap = np.zeros(int(split_size), dtype=bool)
    bitmap[np.asarray(ids, dtype=np.int64)] = True
    return mask_to_hex(bitmap)


def ids_digest(ids: Any) -> str:
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()[:16]
