"""The IDC-native subcommands of ``intake-tcia``: ``sql``, ``indices``, ``fetch-index``.

Registered by :func:`intake_tcia.cli.build_parser` through :func:`register`, which hands over
the helpers the subcommands share with the others (the client the options describe, and the
printing of a frame as a table, CSV or JSON), so this module imports nothing of the CLI's.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["register"]

_INDEX_COLUMNS = ("table", "rows", "present", "source")


def register(command: Callable[..., argparse.ArgumentParser], client: Callable[..., Any],
             print_frame: Callable[..., None]) -> None:
    """Add the subcommands with ``command(name, run, help, output=...)`` (cli.py's)."""
    sub = command("sql", _sql, "run one SQL SELECT over IDC's index tables (index, "
                  "collections_index, prior_versions_index, ... and fetched indices)",
                  output="a table")
    sub.add_argument("query", metavar="SQL",
                     help='e.g. "SELECT collection_id, COUNT(*) AS n FROM index GROUP BY ALL"')
    sub.set_defaults(client=client, print_frame=print_frame)

    sub = command("indices", _indices, "list IDC's index tables: rows, present, source",
                  output="a table")
    sub.set_defaults(client=client, print_frame=print_frame)

    sub = command("fetch-index", _fetch_index, "fetch one of IDC's supplementary indices "
                  "(sm_index, seg_index, clinical_index, ...) into the cache, verified")
    sub.add_argument("name", metavar="NAME", help="the index, e.g. sm_index")
    sub.set_defaults(client=client)


def _sql(args: argparse.Namespace) -> int:
    with args.client(args) as client:
        frame = client.sql(args.query)
    args.print_frame(frame, args)
    return 0


def _indices(args: argparse.Namespace) -> int:
    with args.client(args) as client:
        frame = client.indices()
    if args.format is None:
        frame = frame.assign(columns=frame["columns"].map(len))
    args.print_frame(frame, args, _INDEX_COLUMNS)
    return 0


def _fetch_index(args: argparse.Namespace) -> int:
    with args.client(args) as client:
        path = client.fetch_index(args.name)
    print(path)
    return 0
