"""intake-tcia: The Cancer Imaging Archive as catalogs, DataFrames and a tcia:// filesystem."""

__version__ = "0.1.0"

from .client import TCIAClient  # noqa: E402
from .errors import (  # noqa: E402
    DownloadError,
    MissingDependencyError,
    TCIAAuthError,
    TCIAConnectionError,
    TCIAError,
    TCIAHTTPError,
    TCIAIntegrityError,
    TCIANotFoundError,
    TCIAResponseError,
    UnsafeArchiveError,
)

__all__ = [
    "TCIAClient",
    "TCIAError",
    "TCIAHTTPError",
    "TCIANotFoundError",
    "TCIAAuthError",
    "TCIAConnectionError",
    "TCIAResponseError",
    "TCIAIntegrityError",
    "UnsafeArchiveError",
    "DownloadError",
    "MissingDependencyError",
    "__version__",
]
