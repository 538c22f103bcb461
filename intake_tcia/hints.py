"""What a user gets back for a misspelt keyword or name: the closest right one.

:func:`check_keywords`
    ``TypeError`` for keywords a function does not take, naming the public function and the
    closest keyword it does take (``patientId`` -> ``patient_id``, ``modalities`` ->
    ``modality``).
:func:`with_keyword_hints`
    Wraps every public method of a class so that Python's own "unexpected keyword argument"
    gains that hint; nothing runs unless the call already failed.
:func:`check_search_names`
    After an empty search: :class:`~intake_tcia.errors.TCIAUnknownNameError` for a collection,
    patient, modality or body part the archive lacks, as the other queries raise.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["check_keywords", "with_keyword_hints", "check_search_names"]

_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
# search keyword -> the NBIA parameter the query methods check names with
_SEARCH_NAMES = {"collection": "Collection", "patient_id": "PatientID", "modality": "Modality",
                 "body_part": "BodyPartExamined"}


def _snake(name: str) -> str:
    """``patientId`` / ``PatientID`` / ``SeriesInstanceUID`` -> ``patient_id`` / ... ."""
    words = [w.lower() for w in _WORDS.findall(name)]
    return "_".join(words).replace("instance_uid", "uid")


def closest_keyword(name: str, allowed: Iterable[str]) -> str | None:
    """The allowed keyword a misspelt or camel-cased ``name`` most likely meant, or None."""
    allowed = list(allowed)
    snake = _snake(name)
    singular = snake[:-3] + "y" if snake.endswith("ies") else snake.removesuffix("s")
    for candidate in (name, snake, name.lower(), singular):
        if candidate in allowed:
            return candidate
    close = difflib.get_close_matches(_snake(name), allowed, n=1, cutoff=0.6)
    return close[0] if close else None


def check_keywords(given: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Raise ``TypeError`` naming ``where`` for the first keyword of ``given`` not allowed.

    Parameters
    ----------
    given : mapping
        The keywords of the call.
    allowed : iterable of str
        The keywords the function takes.
    where : str
        The public name to show, e.g. ``"TCIAClient.search()"``.
    """
    allowed = list(allowed)
    for name in given:
        if name not in allowed:
            best = closest_keyword(name, allowed)
            hint = f"; did you mean {best!r}?" if best else f"; it takes {', '.join(allowed)}"
            raise TypeError(f"{where} got an unexpected keyword argument {name!r}{hint}")


def _hinted(method: Callable[..., Any], where: str) -> Callable[..., Any]:
    signature = inspect.signature(method)
    allowed = [p.name for p in signature.parameters.values()
               if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)][1:]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except TypeError:
            if not takes_any:
                try:
                    signature.bind(*args, **kwargs)
                except TypeError:
                    check_keywords(kwargs, allowed, where)
            raise

    return call


def with_keyword_hints(cls: type) -> type:
    """Give every public method of ``cls`` (its own and inherited) a did-you-mean for a
    keyword it does not take."""
    for base in reversed(cls.__mro__[:-1]):
        for name, value in list(vars(base).items()):
            if (not name.startswith("_") and inspect.isfunction(value)
                    and not hasattr(value, "__wrapped__")):
                setattr(cls, name, _hinted(value, f"{cls.__name__}.{name}()"))
    return cls


def check_search_names(client: Any, criteria: Mapping[str, Any]) -> None:
    """After a search that found nothing: raise for the first name the archive lacks
    (through ``client._check_names``, as the other queries)."""
    collections = criteria.get("collection")
    scope = [collections] if isinstance(collections, str) else list(collections or [])
    for keyword, parameter in _SEARCH_NAMES.items():
        value = criteria.get(keyword)
        values = [value] if isinstance(value, str) else list(value or [])
        for one in values:
            if keyword == "body_part" and one.upper() == "NOT SPECIFIED":
                continue
            params = {parameter: one}
            if keyword == "patient_id" and len(scope) == 1:
                params["Collection"] = scope[0]
            client._check_names(params, "getSimpleSearch")
