"""Reading and writing ``.tcia`` manifests, the download lists of the NBIA Data Retriever.

A manifest is a Java properties header followed by one SeriesInstanceUID per line::

    downloadServerUrl=https://nbia.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet
    includeAnnotation=true
    noOfrRetry=4
    databasketId=manifest-1746549740123.tcia
    manifestVersion=3.0
    ListOfSeriesToDownload=
    1.3.6.1.4.1.14519.5.2.1.200342509692530171737702339931600829926

The Data Retriever loads the header with ``java.util.Properties``, so the header follows its
rules: ``#`` and ``!`` comment lines, blank lines, ``=``, ``:`` or blanks between key and value,
backslash escapes (``\\uXXXX``) and line continuations; ``\\n``, ``\\r\\n`` and ``\\r`` all end a
line. Every header key is optional except ``ListOfSeriesToDownload``, which ends the header.
NBIA's server code ends every line with ``\\n``; the portal's files end with one more blank
line. A manifest read and written back keeps its header, line ending and final line endings
byte for byte; comments and blank lines elsewhere are not kept.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ._lazy import is_instance
from ._validate import validate_file_name, validate_uid
from .config import is_nlst

__all__ = [
    "Manifest",
    "read_manifest",
    "write_manifest",
    "write_manifests",
    "as_series_uids",
    "series_uid_values",
    "DEFAULT_DOWNLOAD_SERVER_URL",
    "NLST_DOWNLOAD_SERVER_URL",
]

DEFAULT_DOWNLOAD_SERVER_URL = (
    "https://nbia.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet"
)
NLST_DOWNLOAD_SERVER_URL = (
    "https://nlst.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet"
)
MANIFEST_VERSION = "3.0"
LIST_KEY = "ListOfSeriesToDownload"

_NEWLINE = re.compile(r"\r\n|\r|\n")
_BLANKS = " \t\f"  # what java.util.Properties counts as white space
_KEY_END = re.compile(r"(?<!\\)((?:\\\\)*)[=: \t\f]")  # first unescaped separator
_ESCAPE = re.compile(r"\\(u[0-9A-Fa-f]{4}|.|$)", re.DOTALL)
_NAMED = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}
_NAMED_BACK = {v: "\\" + k for k, v in _NAMED.items()}


@dataclass
class Manifest:
    """The contents of a ``.tcia`` manifest.

    Parameters
    ----------
    series_uids : list of str
        The SeriesInstanceUIDs to download, in order.
    properties : dict of str to str
        The header before ``ListOfSeriesToDownload=``, in order (``downloadServerUrl``,
        ``includeAnnotation``, ``noOfrRetry``, ``databasketId``, ``manifestVersion``, ...).
    newline : str
        What ends a line: ``"\\n"`` (as NBIA writes), ``"\\r\\n"`` or ``"\\r"``.
    ending : str
        What follows the last line: ``"\\n"`` (as NBIA writes), ``""`` (no final newline),
        ``"\\n\\n"`` (a final blank line, as in files from the TCIA portal), ...
    """

    series_uids: list[str]
    properties: dict[str, str] = field(default_factory=dict)
    newline: str = "\n"
    ending: str = "\n"

    def __post_init__(self) -> None:
        self.series_uids = [
            validate_uid(uid, f"SeriesInstanceUID (item {i})")
            for i, uid in enumerate(self.series_uids)
        ]
        if LIST_KEY in self.properties:
            raise ValueError(f"{LIST_KEY} is not a header property; it starts the series list")
        if self.newline not in ("\n", "\r\n", "\r"):
            raise ValueError(f"newline must be '\\n', '\\r\\n' or '\\r', not {self.newline!r}")
        if self.ending.strip("\r\n"):
            raise ValueError(f"ending must be line endings only, not {self.ending!r}")

    @property
    def download_server_url(self) -> str | None:
        """str or None: ``downloadServerUrl``, the NBIA download servlet the list is meant for."""
        return self.properties.get("downloadServerUrl")

    @property
    def databasket_id(self) -> str | None:
        """str or None: ``databasketId``, usually the manifest's file name."""
        return self.properties.get("databasketId")

    @property
    def include_annotation(self) -> bool:
        """bool: ``includeAnnotation``, read as Java's ``Boolean.valueOf`` does."""
        return self.properties.get("includeAnnotation", "").strip().lower() == "true"

    @property
    def retries(self) -> int | None:
        """int or None: ``noOfrRetry``, how often the Data Retriever retries a series."""
        value = self.properties.get("noOfrRetry", "").strip()
        return int(value) if value.isdecimal() else None

    def to_text(self) -> str:
        """str: the manifest as the Data Retriever reads it (ASCII; other characters escaped)."""
        lines = [f"{_escape(k, key=True)}={_escape(v)}" for k, v in self.properties.items()]
        lines += [f"{LIST_KEY}=", *self.series_uids]
        return self.newline.join(lines) + self.ending

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the manifest to ``path`` and return it as a :class:`~pathlib.Path`.

        A directory, or a path ending in a separator (``"newdir/"``, made if need be), gets a
        file named after ``databasketId``, which must then be a plain file name (a manifest
        from elsewhere may hold ``../../x.tcia``). Missing parent folders are made.

        Raises
        ------
        ValueError
            If the file would be named after a ``databasketId`` that is no plain file name.
        """
        folder = os.fspath(path).endswith(("/", os.sep))
        path = Path(path)
        if folder or path.is_dir():
            name = validate_file_name(self.databasket_id or _new_databasket_id(), "databasketId")
            path.mkdir(parents=True, exist_ok=True)
            path = path / name
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.to_text().encode("ascii"))
        return path


def read_manifest(path_or_file: str | os.PathLike[str] | IO[Any]) -> Manifest:
    """Read a ``.tcia`` manifest.

    Parameters
    ----------
    path_or_file : str, path-like or file object
        A manifest file, or an open file holding one (binary; or text opened with
        ``newline=""``, else Python turns ``\\r\\n`` into ``\\n`` before it is seen).

    Returns
    -------
    Manifest
        Its series UIDs (in file order, duplicates kept) and header.

    Raises
    ------
    ValueError
        If the file is not a manifest (no ``ListOfSeriesToDownload=`` line, or a malformed
        escape), or a line of the series list is not a DICOM UID; the message names the line.

    Examples
    --------
    >>> m = read_manifest("manifest-1746549740123.tcia")  # doctest: +SKIP
    >>> m.series_uids[:1], m.download_server_url  # doctest: +SKIP
    """
    if hasattr(path_or_file, "read"):
        source = str(getattr(path_or_file, "name", "<manifest>"))
        data = path_or_file.read()
    else:
        source = os.fspath(path_or_file)
        data = Path(source).read_bytes()
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            data = data.decode("latin-1")  # what java.util.Properties assumes
    return _parse(data, source)


def write_manifest(
    series: Any,
    path: str | os.PathLike[str],
    *,
    download_server_url: str | None = None,
    include_annotation: bool | None = None,
    retries: int | None = None,
    databasket_id: str | None = None,
) -> Path:
    """Write a ``.tcia`` manifest, as the NBIA Data Retriever and ``TCIAClient.download`` read.

    Parameters
    ----------
    series : Manifest, str, iterable of str or pandas.DataFrame
        What to list: a :class:`Manifest` (written as it is, apart from the options given
        here), one UID, UIDs, a DataFrame with a ``SeriesInstanceUID`` column, or the path of
        another manifest. Apart from a Manifest's, duplicates are dropped, keeping the first.
    path : str or path-like
        The file to write; a directory, or a path ending in ``/`` (made if need be), gets a
        file named after ``databasketId``.
    download_server_url : str, optional
        ``downloadServerUrl``. Default: NBIA's download servlet, or the NLST one when
        ``series`` is a DataFrame whose ``Collection`` is NLST.
    include_annotation : bool, optional
        ``includeAnnotation``, default True.
    retries : int, optional
        ``noOfrRetry``, default 4.
    databasket_id : str, optional
        ``databasketId``, default ``manifest-<milliseconds since 1970>.tcia`` as NBIA names it.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    ValueError
        If a UID is malformed, there is no series, or a DataFrame mixes NLST with other
        collections (the two live on different download servers).
    TypeError
        If an option has the wrong type.
    """
    if isinstance(series, Manifest):
        manifest = Manifest(list(series.series_uids), dict(series.properties),
                            series.newline, series.ending)
    else:
        manifest = Manifest(as_series_uids(series), {
            "downloadServerUrl": download_server_url or _server_for(series),
            "includeAnnotation": "true",
            "noOfrRetry": "4",
            "databasketId": _new_databasket_id(),
            "manifestVersion": MANIFEST_VERSION,
        })
    if not manifest.series_uids:
        raise ValueError("no series to write: the manifest would be empty")
    options = {
        "downloadServerUrl": _checked(download_server_url, str, "download_server_url"),
        "includeAnnotation": _checked(include_annotation, bool, "include_annotation"),
        "noOfrRetry": _checked(retries, int, "retries"),
        "databasketId": _checked(databasket_id, str, "databasket_id"),
    }
    manifest.properties.update({k: v for k, v in options.items() if v is not None})
    return manifest.write(path)


def write_manifests(series: Any, path: str | os.PathLike[str], **options: Any) -> list[Path]:
    """Write ``.tcia`` manifests, one per download server: NLST's series apart from the rest.

    As :func:`write_manifest` (same ``options``), except that a DataFrame whose ``Collection``
    mixes NLST with other collections gives two files: the others in ``path``, NLST's beside it
    with ``-NLST`` before the suffix (``chest.tcia`` and ``chest-NLST.tcia``; in a folder,
    databasketIds ``manifest-<ms>.tcia`` and ``manifest-<ms>-NLST.tcia``).

    Returns
    -------
    list of pathlib.Path
        The files written: one, or two (the NLST one last).
    """
    if not hasattr(series, "columns") or "Collection" not in series.columns:
        return [write_manifest(series, path, **options)]
    nlst = series["Collection"].map(lambda c: isinstance(c, str) and is_nlst(c)).astype(bool)
    if nlst.all() or not nlst.any():
        return [write_manifest(series, path, **options)]
    text = os.fspath(path)
    if text.endswith(("/", os.sep)) or Path(path).is_dir():
        stem = (options.get("databasket_id") or _new_databasket_id()).removesuffix(".tcia")
        first = {**options, "databasket_id": f"{stem}.tcia"}
        nlst_path, second = path, {**options, "databasket_id": f"{stem}-NLST.tcia"}
    else:
        plain = Path(path)
        first, second = options, options
        nlst_path = plain.with_name(f"{plain.stem}-NLST{plain.suffix}")
    return [write_manifest(series[~nlst], path, **first),
            write_manifest(series[nlst], nlst_path, **second)]


def as_series_uids(series: Any) -> list[str]:
    """Turn any way of naming series into a list of validated, distinct SeriesInstanceUIDs.

    Parameters
    ----------
    series : str, path-like, Manifest, pandas.DataFrame, pandas.Series or iterable of str
        One UID; the path of a ``.tcia`` manifest; a :class:`Manifest`; a DataFrame with a
        ``SeriesInstanceUID`` column, or one row of it (``df.iloc[0]``); or UIDs.

    Returns
    -------
    list of str
        The UIDs in their first order, each once.

    Raises
    ------
    ValueError
        If a UID is malformed, or a DataFrame has no ``SeriesInstanceUID`` column.
    TypeError
        If ``series`` or one of its items is of another type.
    """
    uids = series_uid_values(series)
    checked = (validate_uid(uid, f"SeriesInstanceUID (item {i})") for i, uid in enumerate(uids))
    return list(dict.fromkeys(checked))


def series_uid_values(series: Any) -> list[Any]:
    """The UIDs ``series`` names (see :func:`as_series_uids`), as given: not yet validated."""
    if isinstance(series, Manifest):
        return list(series.series_uids)
    if isinstance(series, os.PathLike) or (
        isinstance(series, str) and series.strip().lower().endswith(".tcia")
    ):
        return list(read_manifest(series).series_uids)
    if isinstance(series, str):
        return [series]
    if is_instance(series, "pandas", "Series") and "SeriesInstanceUID" in series.index:  # a row
        return [series["SeriesInstanceUID"]]
    if hasattr(series, "columns"):  # a DataFrame
        if "SeriesInstanceUID" not in series.columns:
            raise ValueError(
                "the DataFrame has no SeriesInstanceUID column; columns are "
                f"{list(series.columns)}"
            )
        return series["SeriesInstanceUID"].tolist()
    if isinstance(series, Iterable):
        return list(series)
    raise TypeError(
        "series must be a UID, a list of UIDs, a DataFrame with SeriesInstanceUID or a "
        f".tcia manifest, not {type(series).__name__}"
    )


def _parse(text: str, source: str) -> Manifest:
    """Parse the text of a manifest; ``source`` names it in errors."""
    body = text.rstrip("\r\n")
    lines = _NEWLINE.split(body)
    first_newline = _NEWLINE.search(text)
    newline = first_newline.group() if first_newline else "\n"

    properties: dict[str, str] = {}
    uids: list[str] = []
    i = 0
    while i < len(lines):
        lineno, line = i + 1, lines[i].lstrip(_BLANKS)
        i += 1
        if not line or line[0] in "#!":
            continue
        parts = [line]
        while _continues(parts[-1]):  # joined once at the end: linear however many there are
            parts[-1] = parts[-1][:-1]
            parts.append(lines[i].lstrip(_BLANKS) if i < len(lines) else "")
            i += 1
        line = "".join(parts)
        key, value = _split_property(line, source, lineno)
        if key == LIST_KEY:
            if value.strip():  # a UID on the same line, as a few hand-made manifests have
                uids.append(_checked_uid(value, source, lineno))
            break
        properties[key] = value
    else:
        raise ValueError(
            f"{source} is not a .tcia manifest: it has no '{LIST_KEY}=' line before the "
            "series UIDs"
        )
    for lineno, line in enumerate(lines[i:], start=i + 1):
        line = line.strip()
        if line and line[0] not in "#!":
            uids.append(_checked_uid(line, source, lineno))
    return Manifest(uids, properties, newline, text[len(body) :])


def _continues(line: str) -> bool:
    """Whether a physical properties line ends in an odd number of backslashes (continues
    below), as java.util.Properties counts them."""
    return (len(line) - len(line.rstrip("\\"))) % 2 == 1


def _split_property(line: str, source: str, lineno: int) -> tuple[str, str]:
    """Split one logical properties line into its unescaped key and value."""
    match = _KEY_END.search(line)
    if match is None:
        raw_key, rest = line, ""
    else:
        raw_key, rest = line[: match.end(1)], line[match.end(1) :]
        rest = rest.lstrip(_BLANKS)
        if rest[:1] in ("=", ":"):
            rest = rest[1:].lstrip(_BLANKS)
    try:
        return _unescape(raw_key), _unescape(rest)
    except ValueError as exc:
        raise ValueError(f"{source}, line {lineno}: {exc}") from None


def _unescape(text: str) -> str:
    """Undo java.util.Properties escapes (\\t, \\n, \\uXXXX, \\x meaning x)."""

    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code.startswith("u") and len(code) == 5:
            return chr(int(code[1:], 16))
        if code == "u":
            near = text[max(0, match.start() - 20) : match.end() + 20]
            raise ValueError(
                f"malformed \\uXXXX escape at character {match.start()}, near {near!r}"
            )
        return _NAMED.get(code, code)

    result = _ESCAPE.sub(one, text)
    # characters beyond U+FFFF arrive as two escaped UTF-16 surrogates
    return result.encode("utf-16", "surrogatepass").decode("utf-16")


def _escape(text: str, *, key: bool = False) -> str:
    """Escape ``text`` so that java.util.Properties reads it back unchanged, in ASCII."""
    out = []
    for i, char in enumerate(text):
        if char == "\\":
            out.append("\\\\")
        elif char in _NAMED_BACK:
            out.append(_NAMED_BACK[char])
        elif char == " " and (key or i == 0):
            out.append("\\ ")
        elif key and char in "=:#!":
            out.append("\\" + char)
        elif " " <= char <= "~":
            out.append(char)
        else:
            units = char.encode("utf-16-be", "surrogatepass")
            out += [f"\\u{units[j:j + 2].hex().upper()}" for j in range(0, len(units), 2)]
    return "".join(out)


def _checked_uid(value: str, source: str, lineno: int) -> str:
    """Validate a UID of the series list, naming the file and line on failure."""
    try:
        return validate_uid(value)
    except ValueError as exc:
        raise ValueError(f"{source}, line {lineno}: {exc}") from None


def _checked(value: Any, kind: type, name: str) -> str | None:
    """A write option as its header text, or None when not given."""
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{name} must be {kind.__name__}, not {type(value).__name__}: {value!r}")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{name} must be >= 0, not {value}")
    return str(value)


def _server_for(series: Any) -> str:
    """The download servlet for ``series``: NLST's when a DataFrame says all are NLST."""
    if not hasattr(series, "columns") or "Collection" not in series.columns:
        return DEFAULT_DOWNLOAD_SERVER_URL
    nlst = {is_nlst(c) for c in series["Collection"].dropna().astype(str)}
    if nlst == {True, False}:
        raise ValueError(
            "the series mix NLST with other collections; NLST has its own download server, "
            "so write one manifest for each"
        )
    return NLST_DOWNLOAD_SERVER_URL if nlst == {True} else DEFAULT_DOWNLOAD_SERVER_URL


def _new_databasket_id() -> str:
    """A databasketId as NBIA makes them: ``manifest-<milliseconds since 1970>.tcia``."""
    return f"manifest-{time.time_ns() // 1_000_000}.tcia"
