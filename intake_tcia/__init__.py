"""intake-tcia: The Cancer Imaging Archive as catalogs, DataFrames and a tcia:// filesystem."""

__version__ = "0.1.0"

from . import errors  # noqa: E402
from .client import TCIAClient  # noqa: E402
from .errors import *  # noqa: E402, F403  (the exception family, listed in errors.__all__)

__all__ = ["TCIAClient", "__version__", *errors.__all__]
