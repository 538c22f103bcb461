"""Heavy libraries imported when first used, so that importing a module costs nothing.

``from ._lazy import pandas as pd`` gives a stand-in whose first attribute (``pd.DataFrame``)
imports pandas; after that each attribute is read from the module itself. Annotations are not
evaluated (``from __future__ import annotations``), so they cost nothing either. This keeps
``import intake_tcia``, ``intake-tcia --help`` and reading one file through ``tcia://`` free of
pandas, pyarrow and numpy, which a user who never asks for a frame does not pay for.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

__all__ = ["Lazy", "is_instance", "numpy", "pandas", "pyarrow", "pyarrow_compute"]


class Lazy:
    """A module imported on first attribute access.

    Parameters
    ----------
    name : str
        The module's import name (``"pyarrow.compute"``).
    """

    def __init__(self, name: str) -> None:
        self.__name = name
        self.__module: ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        module = self.__module
        if module is None:
            module = self.__module = importlib.import_module(self.__name)
        return getattr(module, attribute)

    def __repr__(self) -> str:
        state = "imported" if self.__module is not None else "not imported yet"
        return f"<lazy module {self.__name!r}, {state}>"


def is_instance(value: Any, module: str, name: str) -> bool:
    """``isinstance(value, module.name)``, without importing ``module``: a value cannot be of a
    class whose module nobody imported."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(value, getattr(loaded, name, ()))


pandas: Any = Lazy("pandas")
numpy: Any = Lazy("numpy")
pyarrow: Any = Lazy("pyarrow")
pyarrow_compute: Any = Lazy("pyarrow.compute")
