"""Atomic writes: every file the project writes goes through ``write``, so that a file is either
its old self or the whole new one, never a part, whatever kills the process.

The new contents go to a temporary beside the target, ``.<name>.tmp-<pid>.part``, which is
flushed, fsynced and renamed over the target; the folder is then fsynced so that the rename
itself survives a power cut. ``temporary_target`` recognises such a temporary, so that a run can
clear what a killed one left.
"""
import contextlib
import errno
import os

TMP_MARK = ".tmp-"
TMP_SUFFIX = ".part"


def temporary_name(path: str) -> str:
    """Where ``write`` puts the new contents of path before renaming them into place."""
    folder, base = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{base}{TMP_MARK}{os.getpid()}{TMP_SUFFIX}")


def temporary_target(name: str):
    """The file name a temporary of ``write`` was for (".a.ckpt.tmp-12.part" -> "a.ckpt"), or
    None when name is not such a temporary."""
    if not (name.startswith(".") and name.endswith(TMP_SUFFIX) and TMP_MARK in name):
        return None
    return name[1:].split(TMP_MARK, 1)[0]


def failure_message(path: str, e: BaseException, flag: str) -> str:
    """One sentence saying why path could not be written and what to do about ``flag``."""
    where = os.path.dirname(os.path.abspath(path))
    code = getattr(e, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (f"could not write {path} ({e.strerror}); free some space or choose another {flag}. "
                f"Earlier files are intact.")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write in {where} ({e.strerror}); choose another {flag}."
    if code == errno.EISDIR or os.path.isdir(path):
        return f"{path} is a folder; move it away or choose another {flag}."
    if code in (errno.ENOENT, errno.ENOTDIR):
        return f"cannot write {path}: folder {where} does not exist; create it or choose another {flag}."
    text = str(e).strip()
    reason = getattr(e, "strerror", None) or (text.splitlines()[0] if text else type(e).__name__)
    return f"could not write {path} ({reason}); check the disk or choose another {flag}."


def write(path: str, obj, writer, error: type, flag: str = "--modeldir") -> None:
    """Write obj to path with ``writer(obj, binary_file)``, atomically.

    A failure (a full disk, a folder in the way, no permission) raises ``error`` with one
    sentence naming path and what to do about ``flag``; the temporary is removed.
    """
    if os.path.isdir(path):
        raise error(failure_message(path, IsADirectoryError(errno.EISDIR, "is a folder"), flag))
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            writer(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.remove(tmp)
        if isinstance(e, (OSError, RuntimeError)):
            raise error(failure_message(path, e, flag)) from None
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text(path: str, text: str, error: type, flag: str = "--modeldir") -> None:
    """``write`` for text, as UTF-8."""
    write(path, text, lambda t, f: f.write(t.encode("utf-8")), error, flag)
