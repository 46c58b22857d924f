"""torchvision for the engine, imported in one place: a torchvision built for another torch is
one line that says which release to install, not a 40-line traceback.

A torch and a torchvision from different releases (pip can pick them from two indexes when a
CPU-only install falls back to PyPI) fail inside torchvision's import with
``operator torchvision::nms does not exist``: its compiled operators do not load into this torch.
"""

from __future__ import annotations

import importlib.metadata
import re
from types import ModuleType

import torch

from advtui.core.errors import AdvtuiError


class TorchvisionMismatchError(AdvtuiError):
    """torchvision cannot be imported beside this torch."""

    exit_code = 1


def matching_torchvision(torch_version: str) -> str | None:
    """The torchvision release built for a torch release: 0.(N + 15) for torch 2.N, as
    torchvision's compatibility table lists them (2.0 -> 0.15 ... 2.14 -> 0.29); None otherwise."""
    match = re.match(r"(\d+)\.(\d+)", torch_version)
    if match is None or match[1] != "2":
        return None
    return f"0.{int(match[2]) + 15}"


def mismatch_message(error: BaseException, torch_version: str, torchvision_version: str | None) -> str:
    wanted = matching_torchvision(torch_version)
    install = (f"pip install 'torchvision=={wanted}.*' from the index torch came from" if wanted
               else "install the torchvision release built for this torch")
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (f"torchvision {torchvision_version or '(unknown version)'} does not work with torch {torch_version} "
            f"({detail}): {install} (the README's install section shows how to check the pair)")


def import_torchvision() -> ModuleType:
    try:
        import torchvision
    except (RuntimeError, ImportError, AttributeError) as exc:
        try:
            installed = importlib.metadata.version("torchvision")
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed is None and isinstance(exc, ModuleNotFoundError):
            raise TorchvisionMismatchError("torchvision is not installed: pip install -e . (or install the torchvision "
                                           f"release built for torch {torch.__version__})") from None
        raise TorchvisionMismatchError(mismatch_message(exc, torch.__version__, installed)) from None
    return torchvision
