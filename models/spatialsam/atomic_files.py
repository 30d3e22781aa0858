"""Files written so that a reader (or a resumed run) never sees half of one: the bytes go to a
temporary file in the same folder, which is then renamed over the target. Also the sha256 that
model manifests record."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def sha256_file(path: Path) -> str:
    """Lowercase hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def replace_with(path: Path, write: Callable[[Path], None], suffix: str = ".tmp") -> None:
    """Calls ``write(tmp)`` on a fresh temporary path beside ``path``, then renames it to ``path``.
    The temporary file is removed if ``write`` fails. ``suffix`` lets writers that append their own
    extension (``np.savez`` adds ``.npz``) keep the name they were given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        # mkstemp makes the file 0600; the renamed file gets the mode any new file would (0666 less
        # the umask), so a model exported by one user can be served by another.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    replace_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: Path, text: str) -> None:
    replace_with(path, lambda tmp: tmp.write_text(text))


def torch_save(obj: Any, path: Path) -> None:
    import torch

    replace_with(path, lambda tmp: torch.save(obj, tmp))
