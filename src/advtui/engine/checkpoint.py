"""Checkpoints: written atomically (temp file, then rename), loaded with ``weights_only=True``.

Every way a load can fail (a missing file, a directory, a text file, a truncated archive, a
pickle that asks for an object outside torch's allow-list) is one plain ``CheckpointError``
line: torch's messages carry ANSI escapes and several paragraphs, which are dropped here.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from advtui.core.atomic import atomic_open
from advtui.core.format import plain_line
from advtui.core.errors import CheckpointError

CHECKPOINT_FORMAT = 1


class _Writes:
    """A file object for torch.save that keeps the OSError a write raised: torch turns it into
    a RuntimeError about stream positions, and a full disk should be called a full disk."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:  # a reader sees the old or the new checkpoint, never half of one
        writes = _Writes(f)
        try:
            torch.save({"format": CHECKPOINT_FORMAT, **state}, writes)
        except RuntimeError:
            if writes.error is not None:
                raise writes.error from None
            raise
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist: `advtui show RUN` lists a run's checkpoints")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    try:
        with warnings.catch_warnings():  # torch warns about a foreign pickle's protocol on stderr
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the unpickler raises almost anything on a foreign file
        reason = plain_line(str(exc))
        if isinstance(exc, pickle.UnpicklingError) and "weights_only" in reason.lower().replace(" ", "_"):
            reason = "it holds objects other than tensors and plain values, which are not loaded"
        elif isinstance(exc, (KeyError, IndexError, EOFError, UnicodeDecodeError)) or len(reason) < 12:
            reason = "not a file torch.save wrote"  # what the unpickler says about text is noise
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint ({reason})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path} is not an advtui checkpoint (no model state)")
    return state


def check_model_state(model: torch.nn.Module, weights: Any, path: Path, model_label: str,
                      saved_config: Any = None) -> None:
    """Refuse, in one line naming what differs, weights that do not fit ``model`` (another
    architecture, dataset or width): missing and unexpected keys, and mismatched shapes."""
    expected = model.state_dict()
    if not isinstance(weights, dict):
        raise CheckpointError(f"checkpoint {path} has no model weights")
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [f"{k} is {tuple(v.shape)} here, {tuple(expected[k].shape)} in the model"
              for k, v in weights.items()
              if k in expected and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(expected[k].shape)]
    # A value that is no tensor (edited, or saved by other code) fails only inside load_state_dict,
    # after a run's record was written: name it here.
    not_tensors = [k for k, v in weights.items() if k in expected and not isinstance(v, torch.Tensor)]
    if not (missing or unexpected or shapes or not_tensors):
        return
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} key(s): {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:3])}"
                     f"{', ...' if len(unexpected) > 3 else ''}")
    if shapes:
        parts.append(f"{len(shapes)} shape(s) differ: {shapes[0]}")
    if not_tensors:
        parts.append(f"{len(not_tensors)} value(s) are not tensors: {', '.join(not_tensors[:3])}"
                     f"{', ...' if len(not_tensors) > 3 else ''}")
    saved = ""
    if isinstance(saved_config, dict) and saved_config.get("model"):
        label = f"{saved_config.get('model')} on {saved_config.get('dataset')}"
        if label != model_label:  # what the checkpoint says it holds, when that differs
            saved = f" (saved by a {label} run)"
    raise CheckpointError(f"checkpoint {path}{saved} does not fit the run's {model_label}: {'; '.join(parts)}")
