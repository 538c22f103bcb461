"""The ``tcia_cat`` intake driver, :class:`TCIACatalog` (imported from :mod:`intake_tcia.sources`):
the archive as nested catalogs, each level listed by one query when first looked into.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pandas as pd
from intake.catalog import Catalog
from intake.catalog.local import LocalCatalogEntry
from intake.source.base import DataSource

from . import __version__
from ._client_source import _ClientSource, _plain
from ._series_source import TCIASeriesSource
from .config import SECRETS
from .errors import TCIAError, TCIAUnknownNameError

__all__ = ["TCIACatalog"]

#: What the entries of a TCIACatalog are, by how many of collection, patient_id, study_uid it has.
_LEVELS = ("collection", "patient", "study", "series")


def _describe(level: str, meta: Mapping[str, Any]) -> str:
    """A one-line description of a listing row."""
    if level == "collection":
        return f"TCIA collection {meta['Collection']}"
    if level == "patient":
        sex = f", sex {meta['PatientSex']}" if "PatientSex" in meta else ""
        return f"patient {meta['PatientID']}{sex}"
    if level == "study":
        parts = [meta.get("StudyDate", ""), meta.get("StudyDescription", "")]
        count = meta.get("SeriesCount")
        text = " ".join(str(p) for p in parts if p) or meta["StudyInstanceUID"]
        return f"{text} ({count} series)" if count is not None else text
    parts = [meta.get("Modality", ""), meta.get("SeriesDescription", "")]
    text = " ".join(str(p) for p in parts if p) or meta["SeriesInstanceUID"]
    count = meta.get("ImageCount")
    return f"{text} ({count} images)" if count is not None else text


class _Listing(Mapping[str, LocalCatalogEntry]):
    """The entries of one :class:`TCIACatalog` level, listed by one query on first use."""

    def __init__(self, catalog: TCIACatalog) -> None:
        self._catalog = catalog
        self._rows: dict[str, dict[str, Any]] | None = None
        self._entries: dict[str, LocalCatalogEntry] = {}
        self._lock = threading.Lock()

    def _listed(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            if self._rows is None:
                frame, key = self._catalog._list_level()
                frame = frame.dropna(subset=[key]).drop_duplicates(subset=[key])
                self._rows = {str(row[key]): _plain(row) for _, row in frame.iterrows()}
            return self._rows

    def __getitem__(self, key: str) -> LocalCatalogEntry:
        if key not in self._entries:
            self._entries[key] = self._catalog._make_entry(key, self._listed()[key])
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._listed())

    def __len__(self) -> int:
        return len(self._listed())

    def __contains__(self, key: object) -> bool:
        return key in self._listed()


class TCIACatalog(_ClientSource, Catalog):
    """The archive as nested catalogs: Collection -> Patient -> Study -> Series.

    Opened with no arguments it lists collections; with ``collection`` its patients; with
    ``patient_id`` too, their studies; with ``study_uid`` too, that study's series, each a
    :class:`TCIASeriesSource`. Each level is listed by one query (``getCollectionValues``,
    ``getPatient``, ``getPatientStudy``, ``getSeries``) the first time its entries are looked
    into, never when it is opened, and nothing is downloaded. Each entry's metadata holds its
    listing row: for series the modality, dates, ImageCount, FileSize, DOI
    (DataDescriptionURI) and licence.

    Parameters
    ----------
    collection, patient_id, study_uid : str, optional
        The level to open (each needs the ones before it).
    metadata : dict, optional
        Extra metadata (catalog entries pass their listing row).
    ttl : float, default 60
        Seconds before a listing may be asked again (intake's catalog reload).
    **client_options
        Client keywords (``api_url``, ``nlst_api_url``, ``cache_dir``, ``timeout``, ...),
        defaulting to the ``INTAKE_TCIA_*`` environment variables.

    Examples
    --------
    >>> cat = intake.open_tcia_cat()                         # doctest: +SKIP
    >>> src = cat["LIDC-IDRI"]["LIDC-IDRI-0001"][study_uid][series_uid]  # doctest: +SKIP
    """

    # Its public home: intake writes this path as the driver of saved catalogs and hashes it.
    __module__ = "intake_tcia.sources"
    name = "tcia_cat"
    version = __version__

    def __init__(
        self,
        collection: str | None = None,
        patient_id: str | None = None,
        study_uid: str | None = None,
        *,
        metadata: dict[str, Any] | None = None,
        ttl: float = 60,
        **client_options: Any,
    ) -> None:
        given = [collection or None, patient_id or None, study_uid or None]
        for n, value in enumerate(given[1:], start=1):
            if value is not None and given[n - 1] is None:
                raise TypeError(f"{_LEVELS[n]} level needs the {_LEVELS[n - 1]} given too")
        self.collection, self.patient_id, self.study_uid = given
        self.level = _LEVELS[sum(v is not None for v in given)]
        self._set_client_options(client_options)
        name = next((v for v in reversed(given) if v is not None), "tcia")
        super().__init__(name=name, metadata=metadata, ttl=ttl)

    def _load(self) -> None:
        self._entries = _Listing(self)

    def __getitem__(self, key: Any) -> Any:
        """The entry ``key``; an unknown name raises :class:`TCIAUnknownNameError` (a
        ``KeyError``) naming the closest entries of this level."""
        try:
            return super().__getitem__(key)
        except KeyError as exc:
            if isinstance(exc, TCIAError) or not isinstance(key, str):
                raise
            if self.level == "collection":  # an IDC collection id: the entry of TCIA's name
                name = self.client._collection_name(key)
                if name != key:
                    return self[name]
            parent = _LEVELS[_LEVELS.index(self.level) - 1]
            where = "the archive" if self.level == "collection" else f"{parent} {self.name!r}"
            raise TCIAUnknownNameError(self.level, key, list(self._entries), self.name,
                                       where) from None

    def _list_level(self) -> tuple[pd.DataFrame, str]:
        """This level's listing, and the column naming its entries."""
        c = self.client
        if self.level == "collection":
            return c.collections(), "Collection"
        if self.level == "patient":
            return c.patients(self.collection), "PatientID"
        if self.level == "study":
            return c.studies(self.collection, self.patient_id), "StudyInstanceUID"
        frame = c.series(self.collection, self.patient_id, self.study_uid)
        return frame, "SeriesInstanceUID"

    def _make_entry(self, key: str, meta: dict[str, Any]) -> LocalCatalogEntry:
        """The entry of one listed child: a catalog one level down, or a series source."""
        args: dict[str, Any] = dict(self._client_options)
        if self.level == "series":
            driver: type[DataSource] = TCIASeriesSource
            args.update(series_uid=key, collection=self.collection)
        else:
            driver = TCIACatalog
            levels = [self.collection, self.patient_id, self.study_uid]
            levels[_LEVELS.index(self.level)] = key
            args.update(zip(("collection", "patient_id", "study_uid"), levels, strict=True))
            args["ttl"] = self.ttl
        secrets = {k: args.pop(k) for k in SECRETS if k in args}
        entry = _Entry(
            name=key,
            description=_describe(self.level, meta),
            driver=driver,
            args={k: v for k, v in args.items() if v is not None},
            parameters=[],
            metadata=meta,
            getenv=False,
        )
        entry._secrets = secrets
        return entry


class _Entry(LocalCatalogEntry):
    """A child entry whose secrets (the parent's ``api_key``, ``username``, ``password``) are
    passed to the source it opens but kept out of its args, so ``describe()``, ``repr``,
    ``serialize()`` and ``save()`` never show them."""

    _secrets: dict[str, Any]  # set by TCIACatalog._make_entry; a pickled copy goes without

    def _create_open_args(self, user_parameters: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        plugin, open_args = super()._create_open_args(user_parameters)
        return plugin, {**open_args, **getattr(self, "_secrets", {})}
