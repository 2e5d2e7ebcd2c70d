"""Atomic file output: write to a temporary file in the target folder, then rename over the target,
so a crash or Ctrl-C never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; rename it to `path` on success only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; give the file the permissions a plain open() would
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    with atomic_open(path, "w") as handle:
        json.dump(obj, handle, indent=indent, sort_keys=False)
        handle.write("\n")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def staged_folder(
    path: str | os.PathLike, *, replace: Callable[[Path], bool] | None = None
) -> Iterator[Path]:
    """Build a folder in a hidden temporary sibling and move it to `path` only on success.

    A crash, an error or Ctrl-C inside the block leaves `path` as it was (missing, empty or the
    previous folder) and removes the temporary one, so a half-written data set never sits at
    `path`. `path` may be missing or empty; a non-empty `path` is replaced only when
    `replace(path)` says so (the caller decides what it may overwrite), else FileExistsError.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path}: exists and is not a folder")
    occupied = path.is_dir() and any(path.iterdir())
    if occupied and (replace is None or not replace(path)):
        raise FileExistsError(f"{path}: folder is not empty")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.partial-"))
    except OSError as error:  # named by the folder asked for, not the hidden stage
        raise OSError(
            error.errno, f"cannot create this folder ({error.strerror})", str(path)
        ) from None
    try:
        yield stage
        os.chmod(stage, 0o777 & ~_umask())
        if occupied:
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
            os.replace(path, old / path.name)
            os.replace(stage, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, path)  # rename(2) replaces an empty folder
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def load_yaml(text: str) -> Any:
    """yaml.safe_load, except that a mapping naming a key twice is a yaml.YAMLError (safe_load
    keeps the last value silently, so `model: mf` then `model: lightgcn` would train lightgcn),
    and that `1e-3` and `5E4` are floats as in YAML 1.2 (YAML 1.1 wants `1.0e-3`, so
    `learning_rate: 1e-3` was the string '1e-3')."""
    import yaml

    return yaml.load(text, Loader=_strict_loader())


@functools.cache
def _strict_loader():
    import yaml
    from yaml.constructor import ConstructorError

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    repeated = key in seen
                except TypeError:  # an unhashable key: SafeLoader reports it itself
                    continue
                if repeated:
                    raise ConstructorError(
                        None,
                        None,
                        f"key {key!r} appears twice (line {key_node.start_mark.line + 1})",
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    StrictLoader.add_implicit_resolver(  # copies the inherited resolvers, SafeLoader keeps its own
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return StrictLoader
