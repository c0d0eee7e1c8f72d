"""Artifact files: atomic writes and content hashes, shared by every stage that writes or checks a file.

An artifact is written to a temporary file beside its destination and renamed
over it only once complete (``os.replace`` is atomic within one file system), so
a failed or interrupted run leaves the previous file intact and no temp file.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sedeploy.errors import BadInputError


def temp_path_beside(path: Path) -> Path:
    """Create the destination folder and an empty, uniquely named temporary file in it.

    The temporary file is in the same folder so that ``os.replace`` onto ``path`` is
    an atomic rename; it is created with the usual permissions (0666 less the
    umask), which the final file keeps. An unwritable folder fails here, before
    any work is done.
    """
    if path.is_dir():
        raise BadInputError(f"output {path} is a folder; give a file path such as {path / 'model.onnx'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            temp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
            try:
                os.close(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
                return temp
            except FileExistsError:
                continue
    except OSError as error:
        raise BadInputError(
            f"cannot write to folder {path.parent} ({error.strerror or error}); choose a writable output path"
        ) from None


def check_writable(path: str | os.PathLike[str]) -> None:
    """Fail now, with :class:`BadInputError`, if ``path`` could not be written later (before long work starts)."""
    temp_path_beside(Path(path)).unlink()


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` when the block ends without error."""
    path = Path(path)
    temp_path = temp_path_beside(path)
    try:
        yield temp_path
        os.replace(temp_path, path)
    finally:
        temp_path.unlink(missing_ok=True)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    with atomic_output(path) as temp_path:
        temp_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(path)


def sha256_of_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
