"""Faults the sample server injects: bad statuses, broken bodies, hostile zips, slow links.

A :class:`FaultPlan` holds one-shot faults (consumed by the next matching requests), an optional
seeded random failure rate, a latency and a bandwidth cap. The server asks it once per request
(:meth:`FaultPlan.take`) and acts on the :class:`Fault` it gets.

Kinds and their parameters:

================  ===============================================================================
kind              effect (parameters)
================  ===============================================================================
``status``        an error status with a plain-text body (``code`` = 503, ``retry_after`` =
                  seconds or None for a ``Retry-After`` header, ``text``)
``reset``         the connection is reset after ``after_bytes`` of the body (default: half a zip,
                  or before the end of a short body); the body never completes
``stall``         the body pauses for ``seconds`` (= 2) after ``after_bytes`` (default: half a
                  zip, or of a short body), then goes on to its end
``truncate``      a zip stream ends early but cleanly (HTTP-complete, no central directory), after
                  ``after_bytes`` (default 1024, which every series zip passes)
``wrong_md5``     md5hashes.csv lists a wrong hash for entry ``file`` (default 0, the first DICOM)
``html``          HTTP 200 with a ``text/html`` page instead of the answer
``invalid_json``  HTTP 200, ``application/json``, a cut-off JSON text
``endless``       HTTP 200 with a body that never ends (stops after ``seconds`` = 5, no final
                  chunk)
``hang``          nothing is sent for ``seconds`` (= 5), then the connection closes
``absolute_path`` the zip holds a member named ``/tmp/intake-tcia-evil.dcm``
``dotdot``        the zip holds ``../../intake-tcia-evil.dcm``
``symlink``       the zip holds a symbolic link ``link.dcm`` -> ``target`` (= ``/etc/passwd``)
``duplicate``     the zip holds the first DICOM entry's name twice (different content)
``bomb``          the zip holds ``bomb.dcm``, ``size`` (= 256 MiB) zeros deflated to a few hundred
                  kB: far beyond getSeriesSize
================  ===============================================================================

Zip kinds (``truncate``, ``wrong_md5`` and the hostile ones) apply only to the zip endpoints
(getImage, getImageWithMD5Hash).
"""

from __future__ import annotations

import random as _random
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KINDS", "ZIP_KINDS", "HOSTILE_KINDS", "Fault", "FaultPlan"]

HOSTILE_KINDS = ("absolute_path", "dotdot", "symlink", "duplicate", "bomb")
ZIP_KINDS = ("truncate", "wrong_md5", *HOSTILE_KINDS)
KINDS = ("status", "reset", "stall", "html", "invalid_json", "endless", "hang", *ZIP_KINDS)
ZIP_ENDPOINTS = ("getImage", "getImageWithMD5Hash")
_RANDOM_STATUS_CODES = (429, 500, 502, 503, 504)


@dataclass
class Fault:
    """One fault to inject.

    Attributes
    ----------
    kind : str
        One of :data:`KINDS`.
    params : dict
        The kind's parameters (see the module docstring).
    endpoint, series, host : str or None
        Which requests it matches (None matches any): the endpoint name (e.g. ``"getImage"``),
        the SeriesInstanceUID (or SeriesUID) parameter, the listener (``"main"``, ``"nlst"``).
    times : int
        How many more requests it applies to.
    """

    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    endpoint: str | None = None
    series: str | None = None
    host: str | None = None
    times: int = 1

    def matches(self, host: str, endpoint: str, series: str | None) -> bool:
        """Whether this fault applies to a request (endpoint, series and host filters)."""
        return (
            (self.endpoint is None or self.endpoint == endpoint)
            and (self.series is None or self.series == series)
            and (self.host is None or self.host == host)
        )


class FaultPlan:
    """The faults a server injects (thread-safe).

    Subclasses for other servers set :attr:`kinds` and :attr:`only_on` (the S3 bucket of
    :mod:`intake_tcia.testing.idc_bucket` does).

    Attributes
    ----------
    kinds : tuple of str
        The kinds this plan knows (:data:`KINDS`).
    only_on : dict of str to tuple of str
        Kinds that apply only to some endpoints (the zip kinds: getImage, getImageWithMD5Hash).
    latency : float
        Seconds slept before every answer.
    bandwidth : float or None
        Cap on body bytes per second, per connection.
    """

    kinds: tuple[str, ...] = KINDS
    only_on: dict[str, tuple[str, ...]] = dict.fromkeys(ZIP_KINDS, ZIP_ENDPOINTS)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._random: tuple[float, tuple[str, ...], _random.Random, str | None] | None = None
        self.latency: float = 0.0
        self.bandwidth: float | None = None

    def add(
        self,
        kind: str,
        *,
        endpoint: str | None = None,
        series: str | None = None,
        host: str | None = None,
        times: int = 1,
        **params: Any,
    ) -> Fault:
        """Inject ``kind`` into the next ``times`` matching requests.

        Parameters
        ----------
        kind : str
            One of :data:`KINDS`.
        endpoint, series, host : str, optional
            Restrict to an endpoint name, a SeriesInstanceUID, a listener (``"main"``/``"nlst"``).
        times : int
            Number of requests to affect.
        **params
            The kind's parameters, e.g. ``code=429, retry_after=1`` for ``"status"``.

        Returns
        -------
        Fault
        """
        if kind not in self.kinds:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {self.kinds}")
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        fault = Fault(kind, dict(params), endpoint, series, host, times)
        with self._lock:
            self._faults.append(fault)
        return fault

    def random(
        self,
        rate: float,
        kinds: Iterable[str] = ("status", "reset"),
        *,
        seed: int = 0,
        endpoint: str | None = None,
    ) -> None:
        """Fail each matching request with probability ``rate`` (seeded, reproducible).

        The kind is drawn from ``kinds``; a ``"status"`` draws its code from 429, 500, 502, 503,
        504. Zip kinds drawn for a query endpoint leave that request alone.
        """
        kinds = tuple(kinds)
        unknown = set(kinds) - set(self.kinds)
        if unknown or not kinds:
            raise ValueError(
                f"unknown fault kinds {sorted(unknown)}; expected some of {self.kinds}")
        if not 0 <= rate <= 1:
            raise ValueError(f"rate must be within [0, 1], got {rate}")
        with self._lock:
            self._random = (rate, kinds, _random.Random(seed), endpoint)

    def clear(self) -> None:
        """Remove every fault, the random rate, latency and bandwidth cap."""
        with self._lock:
            self._faults.clear()
            self._random = None
            self.latency = 0.0
            self.bandwidth = None

    @property
    def pending(self) -> list[Fault]:
        """list of Fault: The one-shot faults not yet used up."""
        with self._lock:
            return list(self._faults)

    def take(self, host: str, endpoint: str, series: str | None) -> Fault | None:
        """Return the fault for one request (using up a one-shot), or None."""
        with self._lock:
            for fault in self._faults:
                if self._applies(fault, host, endpoint, series):
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return Fault(fault.kind, fault.params, endpoint, series, host)
            if self._random is None:
                return None
            rate, kinds, rng, only = self._random
            if only not in (None, endpoint) or rng.random() >= rate:
                return None
            kind = rng.choice(kinds)
            params = {"code": rng.choice(_RANDOM_STATUS_CODES)} if kind == "status" else {}
        fault = Fault(kind, params, endpoint, series, host)
        return fault if self._applies(fault, host, endpoint, series) else None

    def _applies(self, fault: Fault, host: str, endpoint: str, series: str | None) -> bool:
        if endpoint not in self.only_on.get(fault.kind, (endpoint,)):
            return False
        return fault.matches(host, endpoint, series)
