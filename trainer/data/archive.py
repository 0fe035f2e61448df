"""Unpacking a .tar.gz archive from a stranger: all of it or nothing, and nothing outside its target.

Members that are links or devices, or whose paths leave the target, refuse the whole archive
before anything is written.
"""
import errno
import gzip
import os
import shutil
import tarfile
import tempfile
import zlib

from trainer.data.errors import DataError


def _check_members(archive: str, target: str, members) -> None:
    """Refuse an archive with a member that is a link or device, or whose path leaves target."""
    for m in members:
        norm = os.path.normpath(m.name)
        if os.path.isabs(m.name) or norm == os.pardir or norm.startswith(os.pardir + os.sep):
            raise DataError(f"{archive} contains the path {m.name!r}, which leaves {target}; "
                            f"the archive was not unpacked.")
        if not (m.isfile() or m.isdir()) or (m.isfile() and norm == os.curdir):
            raise DataError(f"{archive} contains {m.name!r}, which is not a plain file or "
                            f"folder; the archive was not unpacked.")


def _unpack_error(source: str, target: str, e: OSError) -> DataError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return DataError(f"the disk holding {target} ran out of space while unpacking {source}; "
                         f"nothing was unpacked, free some space (CIFAR-10 and CIFAR-100 each need "
                         f"about 180 MB) and try again.")
    return DataError(f"could not unpack {source} into {target} ({e.strerror or e}); nothing was "
                     f"unpacked, check that {target} is a folder you can write to.")


def _move_into_place(staging: str, target: str, source: str) -> None:
    """Move every top-level entry of staging into target, or none: an entry already in target is
    left untouched and named (only an empty folder is replaced)."""
    names = sorted(os.listdir(staging))
    for name in names:
        dest = os.path.join(target, name)
        empty_folder = (os.path.isdir(dest) and not os.path.islink(dest) and not os.listdir(dest)
                        and os.path.isdir(os.path.join(staging, name)))
        if os.path.lexists(dest) and not empty_folder:
            kind = "folder" if os.path.isdir(dest) else "file"
            raise DataError(f"{dest} is in the way of unpacking {source}: a {kind} of that name is "
                            f"already there and was left untouched; move or delete it and try "
                            f"again.")
    moved = []
    try:
        for name in names:
            was_empty_folder = os.path.isdir(os.path.join(target, name))
            os.replace(os.path.join(staging, name), os.path.join(target, name))
            moved.append((name, was_empty_folder))
    except BaseException:
        for name, was_empty_folder in reversed(moved):  # put target back as it was
            os.replace(os.path.join(target, name), os.path.join(staging, name))
            if was_empty_folder:
                os.mkdir(os.path.join(target, name))
        raise


def safe_extract(archive: str, target: str, source: str = None) -> None:
    """Unpack a .tar.gz into target, refusing members that are links, devices or escape target.

    Members are written to a hidden temporary folder inside target and moved into place only when
    all are complete, so a failure (a full disk, something in the way, Ctrl-C) leaves target as it
    was. ``source`` names the archive in messages (default: its path).
    """
    source = source or archive
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            _check_members(source, target, members)
            try:
                staging = tempfile.mkdtemp(prefix=".cifar-unpacking.", dir=target)
            except OSError as e:
                raise _unpack_error(source, target, e) from None
            try:
                for m in members:
                    dest = os.path.join(staging, m.name)
                    if m.isdir():
                        os.makedirs(dest, exist_ok=True)
                        continue
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                    with tar.extractfile(m) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out)
                _move_into_place(staging, target, source)
            except gzip.BadGzipFile:  # an OSError, yet the archive's fault: reported below
                raise
            except OSError as e:
                raise _unpack_error(source, target, e) from None
            finally:
                shutil.rmtree(staging)
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{source} could not be unpacked ({e or type(e).__name__}); it is corrupt "
                        f"or not a .tar.gz archive.") from None
