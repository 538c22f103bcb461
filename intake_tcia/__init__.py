"""intake-tcia: The Cancer Imaging Archive as catalogs, DataFrames and a tcia:// filesystem."""

import typing
import warnings

__version__ = "0.1.0"

# intake 2 warns "Shell command not executed due to getshell=False" for every string in a catalog
# entry (a misplaced ``else`` in intake/catalog/utils.py ``expand_defaults``), so every call of a
# parameterised entry printed it. `import intake` imports this package (entry point
# intake.imports), so the filter is in place before any catalog is read. Only that message.
warnings.filterwarnings(
    "ignore",
    message="Shell command not executed due to getshell=False",
    category=UserWarning,
    module="intake.catalog.utils",
)

from . import errors  # noqa: E402  (the standard library only)
from .errors import *  # noqa: E402, F403  (the exception family, listed in errors.__all__)

__all__ = ["TCIAClient", "catalog_path", "__version__", *errors.__all__]

if typing.TYPE_CHECKING:
    from .client import TCIAClient

#: Public names imported when first used (PEP 562), so that ``import intake_tcia``, the
#: ``tcia://`` entry point and ``intake-tcia --help`` do not pay for pandas, pyarrow or pydicom.
_LAZY = {"TCIAClient": "client"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def catalog_path() -> str:
    """The path of the archive catalog installed with the package (``tcia.yaml``, intake V1).

    Returns
    -------
    str
        ``intake.open_catalog(intake_tcia.catalog_path())`` opens it from any install, with the
        entries ``tcia``, ``collections``, ``patients``, ``studies`` and ``series``.
    """
    from pathlib import Path

    return str(Path(__file__).with_name("catalogs") / "tcia.yaml")
