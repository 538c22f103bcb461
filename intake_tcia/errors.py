"""The exceptions of intake-tcia.

Every exception the package raises on purpose derives from :class:`TCIAError`, whose
``retryable`` flag says whether asking again may help (one retry loop,
:meth:`intake_tcia.retrieval.transport.RetryBudget.run`, reads it; nothing else decides)::

    TCIAError
    ├── TCIAHTTPError (also OSError)        the server answered with an error status
    │   ├── TCIANotFoundError (also FileNotFoundError)
    │   │   │                               the server does not know (or will not show) a UID
    │   │   └── TCIAUnknownNameError (also KeyError)
    │   │                                   a filter names a collection, patient, ... it lacks
    │   └── TCIAAuthError                   401 / 403
    ├── TCIAConnectionError (also OSError)  no answer: refused, reset, timed out (after retries)
    ├── TCIAResponseError (also ValueError) an answer that cannot be parsed (HTML, bad JSON, ...)
    ├── TCIAIntegrityError                  a download that fails verification (MD5, truncated zip)
    │   └── UnsafeArchiveError              a zip that tries to write outside its folder, or a bomb
    ├── TCIAStorageError (also OSError)     the cache or destination cannot be written (no space,
    │                                       a name too long, ...); names the series and the path
    ├── DownloadError                       one or more series of a download failed; ``.results``
    ├── TCIABackendError                    the chosen backend cannot answer this (the IDC index
    │                                       has no shared carts, ...); names why
    ├── TCIASQLError (also ValueError)      SQL over the IDC index that cannot run: a syntax
    │                                       error, an unknown table or column, a writing
    │                                       statement, an absent or unreadable table file
    └── MissingDependencyError (also ImportError)
                                            an optional extra is not installed
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = [
    "TCIAError",
    "TCIAHTTPError",
    "TCIANotFoundError",
    "TCIAUnknownNameError",
    "TCIAAuthError",
    "TCIAConnectionError",
    "TCIAResponseError",
    "TCIAIntegrityError",
    "UnsafeArchiveError",
    "TCIAStorageError",
    "DownloadError",
    "TCIABackendError",
    "TCIASQLError",
    "IDCFallbackWarning",
    "MissingDependencyError",
]

#: Statuses worth asking again: a request timeout, rate limiting and passing server trouble.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class TCIAError(Exception):
    """Base class of every error raised by intake-tcia.

    Attributes
    ----------
    retryable : bool
        True when the same request may succeed if made again (a lost connection, a 503, a
        corrupt transfer); the class gives the default, ``retryable=`` an instance's own.
    """

    retryable = False

    def __init__(self, *args: Any, retryable: bool | None = None) -> None:
        super().__init__(*args)
        if retryable is not None:
            self.retryable = retryable

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuilt, (type(self), self.args, self.retryable)


def _rebuilt(kind: type[TCIAError], args: tuple[Any, ...], retryable: bool) -> TCIAError:
    error = kind(*args)
    error.retryable = retryable
    return error


class TCIAHTTPError(TCIAError, OSError):
    """The server answered with an error status.

    Attributes
    ----------
    status : int
        The HTTP status code.
    text : str
        The server's own message (NBIA sends plain text, even when it claims JSON).
    url : str
        The URL that was asked for.
    retry_after : float or None
        The seconds the server's Retry-After asked to wait, if it sent one.
    """

    def __init__(self, status: int, text: str, url: str, retry_after: float | None = None) -> None:
        self.status = status
        self.text = text
        self.url = url
        self.retry_after = retry_after
        detail = " ".join(text.split())[:500] or "(empty body)"
        super().__init__(f"HTTP {status} from {url}: {detail}", retryable=status in RETRY_STATUSES)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.status, self.text, self.url)


class TCIANotFoundError(TCIAHTTPError, FileNotFoundError):
    """The server does not know the UID asked for, or will not show it to this user."""


class TCIAUnknownNameError(TCIANotFoundError, KeyError):
    """A filter or catalog key names a collection, patient, modality, ... the archive lacks.

    Raised only where the answer was empty, so a query that finds rows costs nothing more.

    Attributes
    ----------
    field : str
        What was named (``"collection"``, ``"patient_id"``, ``"modality"``, ...).
    value : str
        The value given.
    suggestions : list of str
        The archive's closest names (:func:`difflib.get_close_matches`), best first.
    """

    def __init__(
        self, field: str, value: str, known: Iterable[str], url: str, where: str = "the archive"
    ) -> None:
        names = {str(k).lower(): str(k) for k in known}
        close = difflib.get_close_matches(value.lower(), names, n=3, cutoff=0.6)
        self.field, self.value = field, value
        self.suggestions = [names[c] for c in close]
        hint = (f"; did you mean {' or '.join(map(repr, self.suggestions))}?"
                if self.suggestions else "")
        super().__init__(404, f"no {field} {value!r} in {where}{hint}", url)

    def __str__(self) -> str:
        return str(self.text)  # not KeyError's repr of the message, nor the URL

    def __reduce__(self) -> tuple[Any, ...]:
        return _unknown_name, (self.field, self.value, self.suggestions, self.url)


def _unknown_name(field: str, value: str, known: list[str], url: str) -> TCIAUnknownNameError:
    return TCIAUnknownNameError(field, value, known, url)


class TCIAAuthError(TCIAHTTPError):
    """The server refused the credentials (401) or the access (403)."""


class TCIAConnectionError(TCIAError, OSError):
    """No usable answer: connection refused or reset, or a timeout, after every retry.

    Not ``retryable`` when asking again cannot help: an unknown host, nothing listening at a
    URL that never answered, a URL that cannot be asked.
    """

    retryable = True

    @property
    def permanent(self) -> bool:
        """bool: not ``retryable`` (the name this flag had before)."""
        return not self.retryable


class TCIAResponseError(TCIAError, ValueError):
    """The server answered 200 with a body that cannot be parsed as the endpoint's format."""


class TCIAIntegrityError(TCIAError):
    """Downloaded data failed verification (MD5 mismatch, truncated or corrupt zip); retryable
    unless the archive itself holds it so (a non-DICOM file whose MD5 matches)."""

    retryable = True


class UnsafeArchiveError(TCIAIntegrityError):
    """A zip member would escape its folder, is a link, is duplicated, or inflates too much;
    never retried."""

    retryable = False


class TCIAStorageError(TCIAError, OSError):
    """A series could not be written to the cache or the destination (ENOSPC, ENAMETOOLONG,
    EXDEV, ...); the message names the series and the path, ``errno`` is the system's."""

    @classmethod
    def naming(cls, series_uid: str, exc: OSError, path: object = None) -> TCIAStorageError:
        """The error for a file-system failure ``exc`` met while writing ``series_uid`` to
        ``path`` (named when ``exc`` names no file: a full disk)."""
        where = exc.filename or path or "the cache or destination"
        reason = exc.strerror or str(exc)
        return cls(exc.errno or 0, f"series {series_uid}: {reason}: {where}")


@contextlib.contextmanager
def storage_errors(series_uid: str, path: object = None) -> Iterator[None]:
    """Raise a file-system failure in the block (not a TCIA error) as :class:`TCIAStorageError`
    naming ``series_uid`` and the path (``path``, where the block writes, if the failure names
    none)."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, TCIAError):
            raise
        raise TCIAStorageError.naming(series_uid, exc, path) from exc


class DownloadError(TCIAError):
    """One or more series of a download failed; the full status table is on ``.results``."""

    def __init__(self, message: str, results: Any = None) -> None:
        super().__init__(message)
        self.results = results

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.args[0], self.results)


class TCIABackendError(TCIAError):
    """The backend in use cannot answer this call (say, a shared cart from the IDC index); the
    message names what is missing and which backend can answer."""


class TCIASQLError(TCIAError, ValueError):
    """SQL over the IDC index (:meth:`TCIAClient.sql <intake_tcia.TCIAClient.sql>`) that cannot
    run: the message is DuckDB's (or says which table is absent and how to fetch it, or which
    file cannot be read), followed by the tables there are.

    Attributes
    ----------
    reason : str
        DuckDB's own message, or ours when DuckDB was not asked.
    tables : list of str
        The tables a query can name now.
    path : str or None
        The file that could not be read, when that is the trouble.
    """

    def __init__(self, reason: str, tables: Iterable[str] = (), path: str | None = None) -> None:
        self.reason = reason
        self.tables = sorted(tables)
        self.path = path
        listed = ", ".join(self.tables) or "none"
        super().__init__(f"{reason}\n(tables: {listed})")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.reason, self.tables, self.path)


class MissingDependencyError(TCIAError, ImportError):
    """An optional dependency is missing; the message names the extra that provides it."""


def in_series(exc: TCIAError, series_uid: str, key: str | None = None) -> TCIAError:
    """The same error saying which series (and object ``key``) it is about; ``exc`` itself when
    it says so already, or cannot be made again with another message."""
    missing = [f"series {series_uid}"] if series_uid not in str(exc) else []
    if key is not None and key not in str(exc):
        missing.append(f"object {key}")
    if not missing:
        return exc
    where, text = ", ".join(missing), str(exc)
    if text.startswith(f"series {series_uid}: "):  # "series X, object K: ..."
        where, text = f"series {series_uid}, {where}", text[len(f"series {series_uid}: "):]
    try:
        if isinstance(exc, TCIAHTTPError):
            made: TCIAError = type(exc)(exc.status, f"{where}: {exc.text}", exc.url,
                                        exc.retry_after)
        else:
            made = type(exc)(f"{where}: {text}")
    except TypeError:  # an error class of its own signature
        return exc
    made.retryable = exc.retryable
    return made


def import_optional(module: str, extra: str, feature: str) -> Any:
    """Import ``module``, or raise :class:`MissingDependencyError` naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{feature} needs {module!r}: pip install 'intake-tcia[{extra}]'"
        ) from exc


class IDCFallbackWarning(UserWarning):
    """``backend="auto"``: NBIA could not be reached, the IDC index answered instead."""

