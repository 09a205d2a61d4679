"""Output paths checked before any computation: a file name, in a folder this process can write.

Every verb that writes (``run``, ``study``, ``compare``, ``plot``) calls these
first, so that a path that cannot work is one line and exit 2 before minutes of
computation, not a failure at the end:

* ``check_output_file``: a path ending in a separator names a folder, and an
  existing directory is not a file name; the folder (or, when it does not exist
  yet, the nearest existing folder above it, where it will be created) must
  accept a new file. Writability is tested by creating and removing a probe file
  there: permission bits, read-only file systems, ACLs and root all answer the
  way the real write would (``os.access`` does not, e.g. for root).
* ``check_output_dir``: the same for a folder of figures (an existing path must be
  a directory).
"""

from __future__ import annotations

import os

from ._schema import ConfigError

__all__ = ["check_output_dir", "check_output_file"]


def _nearest_folder(folder: str, label: str) -> str:
    """``folder`` or its nearest existing ancestor; ConfigError if an ancestor is a file."""
    current = folder
    while not os.path.isdir(current):
        if os.path.exists(current):
            raise ConfigError(f"{label}: {current!r} is not a folder")
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def _probe(folder: str, label: str) -> None:
    """Create and remove a file in ``folder``: ConfigError (one line) if that fails."""
    probe = os.path.join(folder, f".wflow-probe-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # left by this pid earlier: the folder takes files
    except OSError as e:
        raise ConfigError(f"{label}: the folder {folder!r} is not writable "
                          f"({e.strerror or e}); choose another place") from None
    os.close(fd)
    try:
        os.remove(probe)
    except OSError:
        pass


def _separator_end(path: str) -> bool:
    return path.endswith(os.sep) or bool(os.altsep and path.endswith(os.altsep))


def check_output_file(path: str, label: str, example: str = "OUT.h5") -> None:
    """ConfigError (one line, starting with ``label``) unless ``path`` can be written as a file."""
    path = os.fspath(path)
    if not path:
        raise ConfigError(f"{label}: is empty; give a file name ({example})")
    if _separator_end(path):
        raise ConfigError(f"{label}: ends with {path[-1]!r}, which names a folder; give a file "
                          f"name (e.g. {os.path.join(path, example)})")
    if os.path.isdir(path):
        raise ConfigError(f"{label}: is a directory; give a file name ({example})")
    folder = os.path.dirname(os.path.abspath(path))
    _probe(_nearest_folder(folder, label), label)


def check_output_dir(path: str, label: str) -> None:
    """ConfigError (one line) unless ``path`` is, or can be created as, a writable folder."""
    path = os.fspath(path)
    if not path:
        raise ConfigError(f"{label}: is empty; give a folder")
    full = os.path.abspath(path)
    if os.path.exists(full) and not os.path.isdir(full):
        raise ConfigError(f"{label}: is a file, not a folder")
    _probe(_nearest_folder(full, label), label)
