"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it into place.

    Parameters
    ----------
    path : str or Path
        Final location.
    write : callable
        Writes the content to the path it is given.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_parquet(path: str | Path, frame: pd.DataFrame) -> Path:
    """Write ``frame`` to ``path`` as Parquet, atomically."""
    return atomic_write(path, lambda p: frame.to_parquet(p, index=False))


def write_arrow(path: str | Path, table: pa.Table) -> Path:
    """Write ``table`` to ``path`` as an uncompressed Arrow IPC (Feather) file, atomically.

    About a third of Parquet's cost for a small table: for files written often and read
    rarely, such as a federated run's per-round checkpoint history.
    """
    return atomic_write(path, lambda p: feather.write_feather(table, p, compression="uncompressed"))


def atomic_dir(target: str | Path, write: Callable[[Path], None]) -> Path:
    """Fill a temporary sibling folder with ``write(tmp)``, then rename it to ``target``.

    Parameters
    ----------
    target : str or Path
        Final folder; an existing one is replaced.
    write : callable
        Writes the folder's files into the path it is given.

    Returns
    -------
    Path
        ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; stores are meant to be shared
    try:
        write(tmp)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def replace_dir(finished: str | Path, target: str | Path) -> Path:
    """Rename the complete folder ``finished`` to ``target``, replacing an existing one.

    The old folder is moved aside before the rename and removed after it, so ``target``
    is always either the old complete folder or the new one.

    Returns
    -------
    Path
        ``target``.
    """
    finished, target = Path(finished), Path(target)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    finished.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
