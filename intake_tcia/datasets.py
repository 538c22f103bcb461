"""A series' instances, as the decoders take them in and as ``read_series`` hands them out.

:func:`dicom_paths`
    A file, a folder (what ``download()`` returns), or an iterable of files, folders or
    pydicom datasets, as one flat list: a folder becomes the DICOM files below it.
:class:`DatasetList`
    A plain ``list`` of pydicom datasets whose repr is one line (echoing it in a notebook does
    not print every header of every slice).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

__all__ = ["DatasetList", "dicom_paths", "is_dicom_file"]

_PREAMBLE = 128
"""int: Bytes before the ``DICM`` prefix of a DICOM Part 10 file (PS3.10 7.1)."""


def is_dicom_file(path: str | os.PathLike) -> bool:
    """bool: ``path`` ends in ``.dcm`` or holds ``DICM`` after its 128-byte preamble."""
    if os.fspath(path).lower().endswith(".dcm"):
        return True
    try:
        with open(path, "rb") as file:
            head = file.read(_PREAMBLE + 4)
    except OSError:
        return False
    return head[_PREAMBLE:] == b"DICM"


def _folder_files(folder: Path) -> list[str]:
    """The DICOM files below ``folder`` (hidden files and folders left out), sorted by path."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = os.path.join(root, name)
            if not name.startswith(".") and is_dicom_file(path):
                found.append(path)
    if not found:
        raise FileNotFoundError(f"no DICOM files in folder {os.fspath(folder)!r}")
    return found


def dicom_paths(given: Any) -> list[Any]:
    """A series' instances as one flat list of paths (str) and datasets.

    Parameters
    ----------
    given : str, os.PathLike, pydicom.Dataset, or an iterable of them
        A file, a folder (every DICOM file below it: ``.dcm`` files and files holding the
        ``DICM`` prefix; hidden files such as the cache's record and ``LICENSE`` are left out),
        a dataset, or any mix of them.

    Returns
    -------
    list
        Paths as ``str``, datasets as they are, in the order given (a folder's files sorted).

    Raises
    ------
    FileNotFoundError
        A path that does not exist, or a folder without DICOM files.
    TypeError
        Something that is neither a path, a dataset nor an iterable of them.
    """
    if isinstance(given, (str, os.PathLike, Dataset)):
        items: Iterable[Any] = [given]
    elif isinstance(given, Iterable):
        items = given
    else:
        raise TypeError(f"expected a path, a folder, a dataset or a list of them, not "
                        f"{type(given).__name__}")
    out: list[Any] = []
    for item in items:
        if isinstance(item, Dataset):
            out.append(item)
        elif isinstance(item, (str, os.PathLike)):
            path = Path(item)
            if path.is_dir():
                out.extend(_folder_files(path))
            elif path.exists():
                out.append(os.fspath(item))
            else:
                raise FileNotFoundError(f"no such file or folder: {os.fspath(item)!r}")
        else:
            raise TypeError(f"expected a path or a dataset, not {type(item).__name__}: {item!r}")
    return out


class DatasetList(list):
    """A list of pydicom datasets (one series, sorted) with a one-line repr.

    It is a plain ``list`` in every other way: index it, slice it, iterate over it. Its repr
    reads ``<12 DICOM datasets of series 1.2.840...: CT 512x512>``.
    """

    def __repr__(self) -> str:
        if not self:
            return "<0 DICOM datasets>"
        first = self[0]
        uids = {str(ds.get("SeriesInstanceUID", "")) for ds in self if isinstance(ds, Dataset)}
        which = f"series {uids.pop()}" if len(uids) == 1 else f"{len(uids)} series"
        what = " ".join(str(first.get(k)) for k in ("Modality",) if first.get(k))
        size = f"{first.get('Rows')}x{first.get('Columns')}" if "Rows" in first else ""
        detail = " ".join(x for x in (what, size) if x)
        noun = "dataset" if len(self) == 1 else "datasets"
        return f"<{len(self)} DICOM {noun} of {which}" + (f": {detail}>" if detail else ">")

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """IPython's display: the same one line."""
        printer.text(repr(self))
