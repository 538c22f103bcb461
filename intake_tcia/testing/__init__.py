"""The offline sample archive: a real NBIA v4 server on loopback, serving pydicom's DICOM files,
and the same files the IDC way (:class:`IDCBucketServer`, a loopback S3 bucket).

>>> from intake_tcia.testing import ArchiveServer
>>> with ArchiveServer() as server:                    # doctest: +SKIP
...     TCIAClient(api_url=server.api_url, nlst_api_url=server.nlst_api_url).collections()

Run it by hand with ``python -m intake_tcia.testing --port 8080``.
"""

from .builder import COLLECTIONS, CollectionInfo, SampleArchive
from .faults import KINDS, Fault, FaultPlan
from .idc_bucket import IDCBucketServer, S3FaultPlan
from .idc_index import write_idc_index
from .seeding import idc_series_table
from .server import ArchiveServer, RequestRecord

__all__ = [
    "COLLECTIONS",
    "KINDS",
    "ArchiveServer",
    "CollectionInfo",
    "Fault",
    "FaultPlan",
    "IDCBucketServer",
    "RequestRecord",
    "S3FaultPlan",
    "SampleArchive",
    "idc_series_table",
    "write_idc_index",
]
