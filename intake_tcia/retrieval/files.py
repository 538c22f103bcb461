"""Files on disk, written once: atomic replacement, flushing, and placing a file elsewhere
without writing its bytes again (reflinks, else hard links, else a copy in the kernel)."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not a Unix: no reflinks
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_path", "boot_id", "copy_file", "fsync_dir", "fsync_file", "md5_of",
           "place_file"]


@functools.lru_cache(maxsize=1)
def boot_id() -> str | None:
    """str or None: this boot of the machine (Linux ``boot_id``), None where there is none."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


@contextlib.contextmanager
def atomic_path(target: Path, *, suffix: str = ".tmp", durable: bool = False) -> Iterator[Path]:
    """A new hidden path next to ``target`` to write the file into; renamed over ``target``
    when the block ends normally, removed whatever happens.

    Parameters
    ----------
    target : Path
        The file to make or replace; readers see its old content or the new, never a part.
    suffix : str
        The temporary's ending (``.nii.gz`` for writers that choose the format by it).
    durable : bool
        Flush the file to disk before the rename.
    """
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}{suffix}")
    try:
        yield temporary
        if durable:
            fsync_file(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def fsync_file(path: Path) -> None:
    """Flush a written file to disk."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def place_file(source: Path, target: Path) -> str:
    """Make ``target`` (a new file) hold ``source``'s bytes without writing them again where
    the file system allows: a reflink (Linux FICLONE: a copy that shares the blocks until one
    side is written), else a hard link (the cache's records notice a write through it), else a
    copy (:func:`copy_file`: another file system, or links refused). Returns which it made:
    ``"reflink"``, ``"link"`` or ``"copy"``. A pair of file systems that refused one reflink
    is not asked again in this process (ext4 refuses every one, at two opens a file)."""
    devices = (os.stat(source).st_dev, os.stat(target.parent).st_dev)
    if devices not in _NO_REFLINKS:
        with open(source, "rb") as src, open(target, "xb") as dst:
            try:
                fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
                return "reflink"
            except (AttributeError, OSError) as exc:  # AttributeError: no fcntl (not Unix)
                refused = getattr(exc, "errno", None)
        target.unlink()  # the empty file made for the reflink
        if refused in _NO_REFLINK_ERRORS or fcntl is None:
            _NO_REFLINKS.add(devices)
    try:
        os.link(source, target)
        return "link"
    except OSError:  # another device, a file system without links, protected links
        pass
    copy_file(source, target)
    return "copy"


def copy_file(source: Path, target: Path) -> None:
    """Copy ``source`` to a new file ``target``: a reflink where the file system has them
    (Linux FICLONE), else a copy in the kernel (``copy_file_range``), else a plain copy. Never a
    hard link, so ``target`` can be edited without changing ``source``."""
    with open(source, "rb") as src, open(target, "xb") as dst:
        try:
            fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
            return
        except (AttributeError, OSError):
            pass
        try:
            while os.copy_file_range(src.fileno(), dst.fileno(), 1 << 30):
                pass
            return
        except (AttributeError, OSError):  # not Linux, or a file system that cannot
            src.seek(0)
            dst.seek(0)
            dst.truncate()
        shutil.copyfileobj(src, dst, 1 << 20)


_FICLONE = 0x40049409  # Linux ioctl: share the source's extents (btrfs, XFS, bcachefs)
#: What a file system without reflinks answers FICLONE (or two file systems, EXDEV); not EINVAL,
#: which btrfs and XFS also give for one file that cannot share its blocks.
_NO_REFLINK_ERRORS = {errno.EOPNOTSUPP, errno.EXDEV, errno.ENOTTY, errno.ENOSYS}
#: (device of the source, device of the target's folder) pairs that refused a reflink.
_NO_REFLINKS: set[tuple[int, int]] = set()


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    block = bytearray(1 << 20)
    with open(path, "rb", buffering=0) as f, memoryview(block) as view:
        while n := f.readinto(block):
            digest.update(view[:n])
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries to disk (where the platform allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
