"""The sample archive: real DICOM files from pydicom arranged as TCIA collections.

Three collections are built from the files pydicom ships (``pydicom.data``, never downloaded):

=====================  =======  ===================================================================
collection             host     content
=====================  =======  ===================================================================
``Pydicom-DICOMDIR``   main     ``dicomdirtests/`` as shipped: 2 patients, 6 studies, 13 series
                                (CR, CT, MR), CC BY 4.0
``Pydicom-CT-Series``  main     1 patient: a 10-slice CT series made from ``CT_small`` (slice
                                numbers run against the position, pixel values differ per slice),
                                a 3-slice MR series from ``MR_small`` and, referring to the CT,
                                a SEG (2 segments, made by highdicom: only when the ``seg``
                                extra is installed), an RTSTRUCT (2 ROIs, one with a hole) and
                                an RTDOSE series of known content
                                (:meth:`SampleArchive.annotation_truth`), CC BY 3.0
``NLST``               nlst     2 patients: two 6-slice CT studies from ``CT_small``; MR series
                                in RLE, JPEG 2000 and JPEG-LS lossless from the ``MR_small``
                                variants, CC BY-NC 4.0
=====================  =======  ===================================================================

Copies get deterministic UIDs (the same every run) and are written once per process to a
temporary folder. Every metadata value served (PatientID, UIDs, dates, ImageCount, FileSize, ...)
is read back from the files, so all endpoints agree with what a download yields. Collection-level
facts that DICOM does not hold (DOI, licence, release date, site) come from :data:`COLLECTIONS`.
"""

from __future__ import annotations

import atexit
import copy
import importlib.util
import shutil
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

__all__ = [
    "COLLECTIONS",
    "SERIES_COLUMNS",
    "CollectionInfo",
    "SampleArchive",
]

#: The columns of v4 ``getSeries`` in the server's order.
SERIES_COLUMNS: tuple[str, ...] = (
    "SeriesInstanceUID", "StudyInstanceUID", "Modality", "ProtocolName", "SeriesDate",
    "SeriesDescription", "BodyPartExamined", "SeriesNumber", "AnnotationsFlag", "Collection",
    "Site", "PatientID", "PatientSex", "PatientAge", "AdmittingDiagnosisDescription",
    "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "ImageCount",
    "MaxSubmissionTimestamp", "LicenseName", "LicenseURI", "DataDescriptionURI", "FileSize",
    "ReleasedStatus", "DateReleased", "StudyDesc", "StudyDate", "ThirdPartyAnalysis", "Authorized",
)
#: Patient- and study-level values kept beside the getSeries columns (for getPatient,
#: getPatientStudy and getSeriesMetadata).
EXTRA_COLUMNS: tuple[str, ...] = (
    "PatientName", "EthnicGroup", "Phantom", "SpeciesCode", "SpeciesDescription", "StudyID",
    "LongitudinalTemporalEventType", "LongitudinalTemporalOffsetFromEvent",
    "PixelSpacing(mm)-Row", "SliceThickness(mm)",
)
#: Integer columns (JSON numbers; nullable).
INT_COLUMNS: tuple[str, ...] = ("SeriesNumber", "ImageCount", "FileSize", "Authorized")
TABLE_COLUMNS: tuple[str, ...] = SERIES_COLUMNS + EXTRA_COLUMNS + ("host",)

_CC_BY_4 = ("Creative Commons Attribution 4.0 International License",
            "https://creativecommons.org/licenses/by/4.0/")
_CC_BY_3 = ("Creative Commons Attribution 3.0 Unported License",
            "http://creativecommons.org/licenses/by/3.0/")
_CC_BY_NC_4 = ("Creative Commons Attribution-NonCommercial 4.0 International License",
               "https://creativecommons.org/licenses/by-nc/4.0/")


@dataclass(frozen=True)
class CollectionInfo:
    """What the archive knows of a collection beyond its DICOM files.

    Attributes
    ----------
    name : str
        The collection name as TCIA spells it.
    host : str
        ``"main"`` or ``"nlst"``: the listener that serves it.
    doi : str
        The collection DOI (without ``https://doi.org/``).
    license_name, license_uri : str
        The licence.
    date_released : str
        Release date, ``MM-DD-YYYY``.
    site : str
        The submitting site.
    title : str
        The DataCite title.
    creators : tuple of (family name, given name)
        The DataCite creators.
    year : int
        The DataCite publication year.
    description : str
        An HTML abstract (getCollectionDescriptions, DataCite).
    """

    name: str
    host: str
    doi: str
    license_name: str
    license_uri: str
    date_released: str
    site: str
    title: str
    creators: tuple[tuple[str, str], ...]
    year: int
    description: str

    @property
    def doi_url(self) -> str:
        """str: The DOI as the server's DataDescriptionURI."""
        return f"https://doi.org/{self.doi}"

    @property
    def license_text(self) -> str:
        """str: The text of the LICENSE zip entry."""
        return (
            f"This data is licensed under the {self.license_name}\n{self.license_uri}\n\n"
            f"Please cite the collection: {self.title}. The Cancer Imaging Archive. "
            f"{self.doi_url}\n"
        )


#: The built-in collections.
COLLECTIONS: dict[str, CollectionInfo] = {
    c.name: c
    for c in (
        CollectionInfo(
            "Pydicom-DICOMDIR", "main", "10.7937/TCIA.SAMPLE-DICOMDIR", *_CC_BY_4, "03-15-2019",
            "Pydicom", "Pydicom DICOMDIR test studies", (("Mason", "Darcy"), ("Scaramallion", "")),
            2019, "<p>CR, CT and MR studies of two patients from pydicom's DICOMDIR tests.</p>",
        ),
        CollectionInfo(
            "Pydicom-CT-Series", "main", "10.7937/TCIA.SAMPLE-CTSERIES", *_CC_BY_3, "06-01-2021",
            "Pydicom", "A small CT volume and MR series", (("Doe", "Jane"),), 2021,
            "<p>A ten-slice CT volume and a three-slice MR series made from pydicom samples.</p>",
        ),
        CollectionInfo(
            "NLST", "nlst", "10.7937/TCIA.HMQ8-J677", *_CC_BY_NC_4, "11-05-2020", "NLST-LSS",
            "National Lung Screening Trial (sample)", (("National Lung Screening Trial Research "
                                                        "Team", ""),), 2013,
            "<p>Low-dose CT screening studies (a sample made of pydicom test files).</p>",
        ),
    )
}

# Derived series: (collection, patient id, study key, study date, series key, source file,
# slices, body part, slice spacing in mm (negative: positions fall as instance numbers rise)).
_DERIVED: tuple[tuple[str, str, str, str, str, str, int, str | None, float], ...] = (
    ("Pydicom-CT-Series", "PYCT-001", "s1", "20040119", "ct", "CT_small.dcm", 10, "CHEST", -2.5),
    ("Pydicom-CT-Series", "PYCT-001", "s1", "20040119", "mr", "MR_small.dcm", 3, None, 1.0),
    ("NLST", "100002", "t0", "19990102", "ct", "CT_small.dcm", 6, "CHEST", -5.0),
    ("NLST", "100002", "t1", "20000104", "ct", "CT_small.dcm", 6, "CHEST", -5.0),
    ("NLST", "100003", "t0", "19990210", "rle", "MR_small_RLE.dcm", 3, "CHEST", 1.0),
    ("NLST", "100003", "t0", "19990210", "j2k", "MR_small_jp2klossless.dcm", 3, "CHEST", 1.0),
    ("NLST", "100003", "t0", "19990210", "jls", "MR_small_jpeg_ls_lossless.dcm", 2, "CHEST", 1.0),
)
_DICOMDIR_PATIENT_FOLDERS = ("77654033", "98892001", "98892003")


def sample_uid(*parts: object) -> str:
    """Return a deterministic UID (pydicom's root) for the given parts."""
    return generate_uid(PYDICOM_ROOT_UID, entropy_srcs=["intake-tcia", *map(str, parts)])


def _mdy(value: Any) -> str | None:
    """Render a DICOM DA (``YYYYMMDD``) as v4 ``MM-DD-YYYY``; None when empty or malformed."""
    text = str(value or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    return f"{text[4:6]}-{text[6:8]}-{text[:4]}"


def _text(ds: pydicom.Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in value)
    text = str(value).strip()
    return text or None


def _series_number(ds: pydicom.Dataset) -> int | None:
    value = ds.get("SeriesNumber")
    return None if value in (None, "") else int(value)


class SampleArchive:
    """The series, files and collections the sample server serves.

    Parameters
    ----------
    root : path-like, optional
        Folder for the files the archive writes (copies with new UIDs, synthetic series). A
        temporary folder, removed at exit, when omitted. Use :meth:`default` for the archive
        built once per process.

    Attributes
    ----------
    collections : dict of str to CollectionInfo
        Every collection, by name.
    root : pathlib.Path
        Where written files live.
    """

    _default: SampleArchive | None = None
    _default_lock = threading.Lock()

    def __init__(self, root: str | Path | None = None) -> None:
        if root is None:
            root = tempfile.mkdtemp(prefix="intake-tcia-archive-")
            atexit.register(shutil.rmtree, root, True)
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.collections: dict[str, CollectionInfo] = dict(COLLECTIONS)
        self._lock = threading.Lock()
        self._instances: dict[str, list[tuple[str, Path]]] = {}
        self._new_names: dict[str, list[str]] = {}
        self._truth: dict[str, np.ndarray] = {}
        self._table = pd.DataFrame(columns=list(TABLE_COLUMNS))
        self.version = 0
        self._build()

    @classmethod
    def default(cls) -> SampleArchive:
        """Return the archive built once per process (files in a temporary folder)."""
        with cls._default_lock:
            if cls._default is None:
                cls._default = cls()
            return cls._default

    # -- public views ------------------------------------------------------------------------
    @property
    def series(self) -> pd.DataFrame:
        """pandas.DataFrame: Every series: the v4 getSeries columns plus ``host``."""
        return self._table[list(SERIES_COLUMNS) + ["host"]].reset_index(drop=True)

    @property
    def table(self) -> pd.DataFrame:
        """pandas.DataFrame: Every series with patient/study extras (what the server queries)."""
        return self._table

    def instances(self, series_uid: str) -> list[tuple[str, Path]]:
        """Return ``(SOPInstanceUID, path)`` of a series' files, by InstanceNumber.

        Metadata-only series (seeded) and unknown UIDs give an empty list.
        """
        return list(self._instances.get(series_uid, ()))

    def annotation_truth(self, series_uid: str) -> np.ndarray:
        """Return what an annotation series of the archive holds, on its CT's voxel grid.

        Parameters
        ----------
        series_uid : str
            A SEG or RTSTRUCT series (masks) or the RTDOSE series (dose).

        Returns
        -------
        numpy.ndarray
            SEG and RTSTRUCT: bool ``(segment, z, y, x)``; RTDOSE: float ``(z, y, x)`` in Gy. In
            both, ``z`` ascends along the slice normal, as :mod:`intake_tcia.volume` orders it.

        Raises
        ------
        KeyError
            Not an annotation series of the archive.
        """
        return self._truth[series_uid].copy()

    def new_file_names(self, series_uid: str) -> list[str]:
        """Return the ``NewFileNames=Yes`` zip names of a series' files (``1-01.dcm``, ...)."""
        return list(self._new_names.get(series_uid, ()))

    def series_uids(self, collection: str | None = None) -> list[str]:
        """Return the SeriesInstanceUIDs of one collection (case-insensitive) or of all."""
        table = self._table
        if collection is not None:
            table = table[table["Collection"].str.upper() == collection.upper()]
        return table["SeriesInstanceUID"].tolist()

    def collection_of(self, series_uid: str) -> CollectionInfo | None:
        """Return the collection holding a series (None if unknown)."""
        rows = self._table.loc[self._table["SeriesInstanceUID"] == series_uid, "Collection"]
        return None if rows.empty else self.collection(rows.iloc[0])

    def collection(self, name: str) -> CollectionInfo:
        """Return a collection's info, creating a default one for a name never seen."""
        if name not in self.collections:
            slug = name.upper().replace("_", "-")
            self.collections[name] = CollectionInfo(
                name, "nlst" if name.upper() == "NLST" else "main", f"10.7937/TCIA.{slug}",
                *_CC_BY_4, "01-01-2024", "Synthetic", f"{name} (synthetic)", (("Doe", "John"),),
                2024, f"<p>{name}: synthetic series.</p>",
            )
        return self.collections[name]

    # -- growing the archive -----------------------------------------------------------------
    def seed_series_metadata(self, df: pd.DataFrame) -> None:
        """Add metadata-only series rows (no files), e.g. a large table for benchmarks.

        Parameters
        ----------
        df : pandas.DataFrame
            Rows in v4 getSeries columns (missing columns become null, extra ones are
            ignored). ``host`` defaults to ``"nlst"`` for collection NLST, else ``"main"``.
            Their image endpoints answer with a zip holding only the LICENSE.
        """
        rows = df.reindex(columns=list(TABLE_COLUMNS))
        if df.get("host") is None:
            rows["host"] = np.where(rows["Collection"].str.upper() == "NLST", "nlst", "main")
        for name in rows["Collection"].dropna().unique():
            self.collection(name)
        self._append(rows)

    def add_synthetic_series(
        self,
        collection: str,
        patient_id: str,
        n_instances: int,
        rows: int = 512,
        columns: int = 512,
        *,
        study_uid: str | None = None,
        modality: str = "CT",
        body_part: str | None = "CHEST",
        spacing: float = 1.25,
        seed: int = 0,
    ) -> str:
        """Write a series of real, uncompressed DICOM files and serve it.

        Starts from ``CT_small``'s header; each instance gets new UIDs, ``rows x columns`` int16
        pixels (deterministic noise plus a per-slice ramp, so files do not compress much) and an
        ImagePositionPatient ``spacing`` millimetres further along the slice normal. Files are
        written one at a time (memory does not grow with the series).

        Parameters
        ----------
        collection, patient_id : str
            Where the series goes (a new collection gets a default DOI and licence).
        n_instances, rows, columns : int
            Number of slices and slice size (each file is about ``2 * rows * columns`` bytes).
        study_uid : str, optional
            Add to this study; a new deterministic one otherwise.
        modality, body_part : str
            Header values.
        spacing : float
            Slice spacing in millimetres.
        seed : int
            Varies the UIDs and pixels, so equal arguments give the same series.

        Returns
        -------
        str
            The new SeriesInstanceUID.
        """
        key = (collection, patient_id, n_instances, rows, columns, modality, seed)
        series_uid = sample_uid("synthetic-series", *key)
        study_uid = study_uid or sample_uid("synthetic-study", collection, patient_id, seed)
        template = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
        folder = self.root / "synthetic" / series_uid
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        ramp = np.add.outer(np.arange(rows), np.arange(columns)).astype(np.int16) % 512
        for i in range(n_instances):
            ds = copy.deepcopy(template)  # Dataset.copy() shares its data elements
            self._stamp(ds, collection, patient_id, study_uid, series_uid, i, modality, body_part)
            ds.StudyDate = ds.SeriesDate = "20240102"
            ds.SeriesNumber = 100 + seed
            ds.SeriesDescription = f"synthetic {rows}x{columns}x{n_instances}"
            noise = rng.integers(0, 64, size=(rows, columns), dtype=np.int16)
            ds.Rows, ds.Columns = rows, columns
            ds.PixelData = (ramp + noise + 8 * i).astype(np.int16).tobytes()
            ds.SliceThickness = abs(spacing)
            ds.ImagePositionPatient = [-160.0, -180.0, round(-75.0 + i * spacing, 4)]
            ds.SliceLocation = round(-75.0 + i * spacing, 4)
            ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        self._index(sorted(folder.iterdir()))
        return series_uid

    # -- building ----------------------------------------------------------------------------
    def _build(self) -> None:
        base = Path(get_testdata_file("CT_small.dcm", download=False)).parent
        files = [
            f for folder in _DICOMDIR_PATIENT_FOLDERS
            for f in sorted((base / "dicomdirtests" / folder).rglob("*")) if f.is_file()
        ]
        self._index(files, collection="Pydicom-DICOMDIR")
        written: list[Path] = []
        for spec in _DERIVED:
            written += self._derive(base, *spec)
        self._index(written)
        self._index(self._annotate("Pydicom-CT-Series", "PYCT-001", "s1", "ct"))

    def _derive(
        self, base: Path, collection: str, patient_id: str, study_key: str, study_date: str,
        series_key: str, source: str, slices: int, body_part: str | None, spacing: float,
    ) -> list[Path]:
        template = pydicom.dcmread(base / source)
        study_uid = sample_uid(collection, patient_id, study_key)
        series_uid = sample_uid(collection, patient_id, study_key, series_key)
        folder = self.root / collection / series_uid
        folder.mkdir(parents=True, exist_ok=True)
        uncompressed = not template.file_meta.TransferSyntaxUID.is_compressed
        paths = []
        for i in range(slices):
            ds = copy.deepcopy(template)  # Dataset.copy() shares its data elements
            self._stamp(ds, collection, patient_id, study_uid, series_uid, i,
                        ds.Modality, body_part)
            ds.StudyDate = ds.SeriesDate = study_date
            ds.StudyDescription = f"{collection} {study_key}"
            ds.SeriesDescription = f"{series_key} {slices} slices"
            normal = np.cross(*np.reshape(np.asarray(ds.ImageOrientationPatient, float), (2, 3)))
            position = np.asarray(template.ImagePositionPatient, float) + normal * spacing * i
            ds.ImagePositionPatient = [round(float(v), 4) for v in position]
            ds.SliceLocation = round(float(position @ normal), 4)
            if uncompressed:
                pixels = template.pixel_array
                ds.PixelData = (pixels.astype(np.int32) + 10 * i).astype(pixels.dtype).tobytes()
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        return paths

    def _annotate(self, collection: str, patient_id: str, study_key: str, series_key: str
                  ) -> list[Path]:
        """Write a SEG, an RTSTRUCT and an RTDOSE series referring to a derived image series,
        recording their content in :meth:`annotation_truth`."""
        from ._annotations import make_rtdose, make_rtstruct, make_seg, sample_annotations

        image_uid = sample_uid(collection, patient_id, study_key, series_key)
        sources = [pydicom.dcmread(path) for _, path in self._instances[image_uid]]
        # InstanceNumber order; ascending position (the volume's z) is the reverse here
        order = np.argsort([float(np.cross(*np.reshape(np.asarray(
            ds.ImageOrientationPatient, float), (2, 3))) @ np.asarray(
                ds.ImagePositionPatient, float)) for ds in sources])
        truth = sample_annotations((len(sources), int(sources[0].Rows),
                                    int(sources[0].Columns)))
        folder = self.root / collection / f"{image_uid}-annotations"
        folder.mkdir(parents=True, exist_ok=True)
        uids = {kind: sample_uid(image_uid, kind) for kind in ("SEG", "RTSTRUCT", "RTDOSE")}
        on_sources = truth.seg_masks[:, np.argsort(order)]  # [s, n]: mask on sources[n]
        datasets = {
            "RTSTRUCT": make_rtstruct(sources, truth.rois(order), series_uid=uids["RTSTRUCT"],
                                      sop_uid=sample_uid(uids["RTSTRUCT"], 0)),
            "RTDOSE": make_rtdose(sources[order[0]], truth.dose_gy, **truth.dose_grid(
                sources[order[0]]), series_uid=uids["RTDOSE"],
                sop_uid=sample_uid(uids["RTDOSE"], 0)),
        }
        self._truth.update({uids["RTSTRUCT"]: truth.roi_masks, uids["RTDOSE"]: truth.dose_gy})
        if importlib.util.find_spec("highdicom") is not None:  # the seg extra
            datasets["SEG"] = make_seg(sources, on_sources, truth.seg_labels,
                                       series_uid=uids["SEG"], sop_uid=sample_uid(uids["SEG"], 0))
            self._truth[uids["SEG"]] = truth.seg_masks
        paths = []
        for kind, ds in datasets.items():
            ds.PatientName = f"{collection}^{patient_id}"
            ds.StudyDescription = f"{collection} {study_key}"
            path = folder / f"{kind}-{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        return paths

    @staticmethod
    def _stamp(
        ds: pydicom.Dataset, collection: str, patient_id: str, study_uid: str, series_uid: str,
        index: int, modality: str, body_part: str | None,
    ) -> None:
        """Give a copied dataset its patient, UIDs and instance number."""
        sop_uid = sample_uid(series_uid, index)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.PatientID, ds.PatientName = patient_id, f"{collection}^{patient_id}"
        ds.Modality = modality
        ds.InstanceNumber = index + 1
        ds.AcquisitionNumber = 1
        if body_part:
            ds.BodyPartExamined = body_part
        elif "BodyPartExamined" in ds:
            del ds.BodyPartExamined
        ds.FrameOfReferenceUID = sample_uid(study_uid, "frame")

    def _index(self, files: Iterable[Path], collection: str | None = None) -> None:
        """Read the headers of ``files`` and add (or replace) their series."""
        groups: dict[str, list[tuple[int, str, Path, pydicom.Dataset]]] = {}
        for path in files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            number = int(ds.get("InstanceNumber") or 0)
            member = (number, ds.SOPInstanceUID, path, ds)
            groups.setdefault(ds.SeriesInstanceUID, []).append(member)
        records = []
        for series_uid, members in groups.items():
            members.sort(key=lambda m: (m[0], m[1]))
            first = members[0][3]
            name = collection or str(first.PatientName).split("^")[0]
            records.append(self._series_record(self.collection(name), first, members))
            self._instances[series_uid] = [(m[1], m[2]) for m in members]
            self._new_names[series_uid] = _new_file_names(
                [int(m[3].get("AcquisitionNumber") or 0) for m in members])
        self._append(pd.DataFrame.from_records(records, columns=list(TABLE_COLUMNS)))

    @staticmethod
    def _series_record(
        info: CollectionInfo, ds: pydicom.Dataset, members: Sequence[tuple[Any, str, Path, Any]],
    ) -> dict[str, Any]:
        spacing = ds.get("PixelSpacing")
        return {
            "SeriesInstanceUID": ds.SeriesInstanceUID,
            "StudyInstanceUID": ds.StudyInstanceUID,
            "Modality": _text(ds, "Modality"),
            "ProtocolName": _text(ds, "ProtocolName"),
            "SeriesDate": _mdy(ds.get("SeriesDate")),
            "SeriesDescription": _text(ds, "SeriesDescription"),
            "BodyPartExamined": _text(ds, "BodyPartExamined"),
            "SeriesNumber": _series_number(ds),
            "AnnotationsFlag": None,
            "Collection": info.name,
            "Site": info.site,
            "PatientID": _text(ds, "PatientID"),
            "PatientSex": _text(ds, "PatientSex"),
            "PatientAge": _text(ds, "PatientAge"),
            "AdmittingDiagnosisDescription": _text(ds, "AdmittingDiagnosesDescription"),
            "Manufacturer": _text(ds, "Manufacturer"),
            "ManufacturerModelName": _text(ds, "ManufacturerModelName"),
            "SoftwareVersions": _text(ds, "SoftwareVersions"),
            "ImageCount": len(members),
            "MaxSubmissionTimestamp": info.date_released,
            "LicenseName": info.license_name,
            "LicenseURI": info.license_uri,
            "DataDescriptionURI": info.doi_url,
            "FileSize": sum(m[2].stat().st_size for m in members),
            "ReleasedStatus": "Yes",
            "DateReleased": info.date_released,
            "StudyDesc": _text(ds, "StudyDescription"),
            "StudyDate": _mdy(ds.get("StudyDate")),
            "ThirdPartyAnalysis": None,
            "Authorized": 1,
            "PatientName": _text(ds, "PatientName"),
            "EthnicGroup": _text(ds, "EthnicGroup"),
            "Phantom": "NO",
            "SpeciesCode": "337915000",
            "SpeciesDescription": "Homo sapiens",
            "StudyID": _text(ds, "StudyID"),
            "LongitudinalTemporalEventType": None,
            "LongitudinalTemporalOffsetFromEvent": None,
            "PixelSpacing(mm)-Row": f"{float(spacing[0]):.6f}" if spacing else None,
            "SliceThickness(mm)": (f"{float(ds.SliceThickness):.6f}"
                                   if ds.get("SliceThickness") not in (None, "") else None),
            "host": info.host,
        }

    def _append(self, rows: pd.DataFrame) -> None:
        rows = rows.reindex(columns=list(TABLE_COLUMNS)).astype(object)
        rows = rows.where(rows.notna(), None)
        for column in INT_COLUMNS:
            rows[column] = pd.to_numeric(rows[column], errors="coerce").round().astype("Int64")
        with self._lock:
            table = self._table
            if len(table):
                table = table[~table["SeriesInstanceUID"].isin(rows["SeriesInstanceUID"])]
                rows = pd.concat([table, rows], ignore_index=True)
            self._table = rows.reset_index(drop=True)
            self.version += 1


def _new_file_names(acquisitions: Sequence[int]) -> list[str]:
    """NBIA's ``<acquisition>-<instance>.dcm`` names, each part zero-padded to the digit count
    of its number of distinct values (48 images, 1 acquisition: ``1-01.dcm`` .. ``1-48.dcm``)."""
    distinct = sorted(set(acquisitions))
    sizes = {a: acquisitions.count(a) for a in distinct}
    seen: dict[int, int] = {}
    names = []
    for a in acquisitions:
        seen[a] = seen.get(a, 0) + 1
        group = distinct.index(a) + 1
        names.append(f"{group:0{len(str(len(distinct)))}d}-{seen[a]:0{len(str(sizes[a]))}d}.dcm")
    return names


def parse_mdy(text: str) -> date:
    """Parse a v4 ``MM-DD-YYYY`` date; raises ValueError if malformed."""
    month, day, year = text.split("-")
    if len(year) != 4:
        raise ValueError(text)
    return date(int(year), int(month), int(day))
