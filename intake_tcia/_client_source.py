"""What every intake driver of :mod:`intake_tcia.sources` shares: one client per settings in a
process, the mixin that holds a source's client keywords, and listing rows as plain metadata.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .client import TCIAClient
from .config import SECRETS, Settings

__all__ = ["shared_client"]

_clients: weakref.WeakValueDictionary[Settings, TCIAClient] = weakref.WeakValueDictionary()
_clients_lock = threading.Lock()


def shared_client(**options: Any) -> TCIAClient:
    """The process' client for these settings (keywords, else environment), made once.

    Raises
    ------
    TypeError
        For a keyword that is not a client setting.
    """
    client = TCIAClient(**options)
    with _clients_lock:
        return _clients.setdefault(client.settings, client)


def _plain(row: Mapping[str, Any]) -> dict[str, Any]:
    """A listing row as YAML-friendly metadata: missing values dropped, dates as ISO text."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if value is None or (np.ndim(value) == 0 and pd.isna(value)):
            continue
        if isinstance(value, pd.Timestamp):
            value = value.date().isoformat()
        elif isinstance(value, np.generic):
            value = value.item()
        out[str(key)] = value
    return out


class _ClientSource:
    """Mixin: the client keywords of a source, and the shared client they name."""

    _client_options: dict[str, Any]

    def _set_client_options(self, options: dict[str, Any]) -> None:
        self._client_options = {k: v for k, v in options.items() if v is not None}
        # intake pickles and writes YAML from the captured keywords: keep secrets out of them
        # (copies read them from the environment).
        captured = getattr(self, "_captured_init_kwargs", {})
        self._captured_init_kwargs = {k: v for k, v in captured.items() if k not in SECRETS}
        self._client: TCIAClient | None = None
        Settings.from_env(**{k: v for k, v in self._client_options.items() if k != "timeout"})

    @property
    def client(self) -> TCIAClient:
        """TCIAClient: the client this source asks through (made on first use)."""
        if self._client is None:
            self._client = shared_client(**self._client_options)
        return self._client
