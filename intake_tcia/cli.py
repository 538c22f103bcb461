"""The ``intake-tcia`` command line: query and search the archive, download, write manifests,
cite, demo.

Every subcommand goes through one :class:`~intake_tcia.client.TCIAClient`, configured by
``--api-url``, ``--nlst-api-url`` and ``--cache-dir`` (before or after the subcommand) or the
``INTAKE_TCIA_*`` environment variables. Errors print one line to stderr: exit status 2 for a
usage error, 1 for anything else (a failed request, a malformed UID, a failed download).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ._validate import validate_uid
from .cli_lock import add_lock_command, download_lock, is_lock_download, run_lock, verify_lock
from .config import BACKENDS
from .errors import TCIAError

if TYPE_CHECKING:
    import pandas as pd

    from .client import TCIAClient

__all__ = ["main", "build_parser"]

PROG = "intake-tcia"

#: Query filters: option name -> help. Options ending in ``uid`` take a DICOM UID.
FILTERS = {
    "collection": "collection name or IDC collection id, e.g. LIDC-IDRI or lidc_idri",
    "patient_id": "PatientID",
    "study_uid": "StudyInstanceUID",
    "series_uid": "SeriesInstanceUID",
    "modality": "modality, e.g. CT",
    "body_part": "BodyPartExamined, e.g. CHEST",
    "manufacturer": "equipment manufacturer",
    "manufacturer_model": "ManufacturerModelName",
}
SERIES_FILTERS = tuple(FILTERS)

#: Query subcommands: name -> (help, filters, columns shown in a table by default).
QUERIES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "collections": ("list the collections", (), ()),
    "modalities": ("list the modalities", ("collection", "body_part"), ()),
    "body-parts": ("list the body parts examined", ("collection", "modality"), ()),
    "manufacturers": (
        "list the equipment manufacturers",
        ("collection", "modality", "body_part"),
        (),
    ),
    "patients": (
        "list patients",
        ("collection",),
        ("Collection", "PatientID", "PatientSex", "EthnicGroup"),
    ),
    "studies": (
        "list studies",
        ("collection", "patient_id", "study_uid"),
        ("Collection", "PatientID", "StudyDate", "StudyDescription", "SeriesCount",
         "StudyInstanceUID"),
    ),
    "series": (
        "list series",
        SERIES_FILTERS,
        ("Collection", "PatientID", "Modality", "BodyPartExamined", "SeriesDescription",
         "ImageCount", "FileSize", "SeriesInstanceUID"),
    ),
}


#: ``search`` criteria that take several values: option name -> help.
SEARCH_LISTS = {
    "collection": FILTERS["collection"],
    "patient_id": FILTERS["patient_id"],
    "modality": FILTERS["modality"],
    "body_part": FILTERS["body_part"] + " (NOT SPECIFIED: none recorded)",
    "manufacturer": FILTERS["manufacturer"],
    "species": "human, mouse, dog or an NCI species code",
}
SEARCH_OPTIONS = (*SEARCH_LISTS, "released_from", "released_to", "min_studies")


class UsageError(Exception):
    """The command line is inconsistent in a way argparse cannot see (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 on success, 1 on an error, 2 on a usage error.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    with _verbose(getattr(args, "verbose", False), args.prog):
        return _run(args)


@contextmanager
def _verbose(on: bool, prog: str) -> Iterator[None]:
    """Print the library's INFO messages (retries) on stderr while the command runs, if ``on``."""
    if not on:
        yield
        return
    logger = logging.getLogger("intake_tcia")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prog}: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _run(args: argparse.Namespace) -> int:
    """Run the command ``args`` names; exceptions become one ``error:`` line and a status."""
    try:
        return args.run(args)
    except UsageError as exc:
        print(f"{args.prog}: error: {exc} (see {args.prog} --help)", file=sys.stderr)
        return 2
    except (TCIAError, ValueError, OSError) as exc:
        print(f"{args.prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{args.prog}: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    """argparse.ArgumentParser: the ``intake-tcia`` parser with every subcommand."""
    from . import __version__

    connection = _connection_options()
    parser = _Parser(
        prog=PROG,
        parents=[connection],
        description="The Cancer Imaging Archive (TCIA) from the command line.",
        epilog="Environment: INTAKE_TCIA_API_URL, INTAKE_TCIA_NLST_API_URL, "
        "INTAKE_TCIA_CACHE_DIR set the defaults of the options above.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name: str, run: Callable[[argparse.Namespace], int], help: str, *,
                output: str | None = None, selection: bool = False) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".",
                                  parents=[connection])
        sub.set_defaults(run=run, prog=sub.prog)
        if selection:
            _add_selection_options(sub)
        if output:
            _add_output_options(sub, default=output)
        return sub

    for name, (help, filters, columns) in QUERIES.items():
        sub = command(name, _query, help, output="a table")
        _add_filters(sub, filters)
        if name == "series":
            _add_cart_option(sub)
        sub.set_defaults(method=name.replace("-", "_"), filters=filters, table_columns=columns)

    sub = command("search", _search, "find series with NBIA's advanced search (each option may "
                  "be repeated: any value matches; different options must all match)",
                  output="a table")
    group = sub.add_argument_group("criteria")
    for name, help in SEARCH_LISTS.items():
        group.add_argument("--" + name.replace("_", "-"), action="append", metavar="TEXT",
                           help=help)
    group.add_argument("--released-from", metavar="DATE", help="DateReleased on or after "
                       "(YYYY-MM-DD)")
    group.add_argument("--released-to", metavar="DATE", help="DateReleased on or before")
    group.add_argument("--min-studies", type=_positive_int, metavar="N",
                       help="patients with at least N matching studies")
    group.add_argument("--all-modalities", action="store_true",
                       help="patients with a series of every --modality given")
    sub.add_argument("--manifest", metavar="PATH",
                     help="write the series found to a .tcia manifest (a file or a folder) "
                     "instead of printing them")
    sub.set_defaults(table_columns=QUERIES["series"][2])

    sub = command("download", _download, "download series into a folder", selection=True)
    sub.add_argument("-o", "--dest", type=Path, default=Path("."), metavar="DIR",
                     help="the folder to download into (default: the current folder)")
    sub.add_argument("--layout", metavar="TEMPLATE",
                     help="each series' folder under DIR, from series metadata fields (default "
                     "{Collection}/{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID})")
    sub.add_argument("--workers", type=_positive_int, metavar="N",
                     help="series downloaded at once")
    sub.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    add_lock_command(command, _lock)

    sub = command("manifest", _manifest, "write a .tcia manifest of series", selection=True)
    sub.add_argument("-o", "--output", default=".", metavar="PATH",  # str: keeps a trailing /
                     help="the .tcia file to write, or a folder to write it into (default: "
                     "the current folder, named as NBIA names manifests)")
    sub.add_argument("--format", choices=("tcia", "s5cmd", "csv"), default="tcia",
                     help="tcia (NBIA's), s5cmd (cp lines from IDC's bucket, one folder per "
                     "series) or csv (every object's s3:// and https:// URL); default tcia")

    sub = command("cite", _cite, "DOIs and licences of series, formatted for a paper",
                  selection=True, output="text for a paper")
    sub.add_argument("--datacite-url", metavar="URL", help="base URL of the DataCite REST API "
                     "(default: INTAKE_TCIA_DATACITE_URL, else DataCite's)")

    sub = command("verify", _verify, "re-hash cached series against their MD5s; a damaged "
                  "series is removed, so it is fetched again when next used")
    sub.add_argument("series_uids", nargs="*", metavar="UID",
                     help="the series to check (default: every series in the cache); with "
                     "--lock, the folder to check")
    sub.add_argument("--lock", type=Path, metavar="LOCKFILE",
                     help="instead, re-hash the files in a folder against a lockfile")

    sub = command("demo", _demo, "a tour of intake-tcia against the built-in sample archive "
                  "(offline; a temporary cache unless --cache-dir)")
    sub.add_argument("-o", "--output", type=Path, default=Path("intake-tcia-demo.png"),
                     metavar="PNG", help="where to save the picture of the middle slice "
                     "(default: %(default)s)")
    sub.add_argument("--collection", metavar="TEXT",
                     help="the collection to take a CT series from (needed with --api-url)")

    from .cli_idc import register

    register(command, _client, _print_frame)
    return parser


# -- option groups, defined once -------------------------------------------------------------------


def _connection_options() -> argparse.ArgumentParser:
    # SUPPRESS: the options may come before or after the subcommand without either overriding
    # the other with its default.
    parent = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    group = parent.add_argument_group("archive")
    group.add_argument("--api-url", metavar="URL", help="base URL of the NBIA v4 API")
    group.add_argument("--nlst-api-url", metavar="URL", help="base URL of the NLST host")
    group.add_argument("--cache-dir", type=Path, metavar="DIR", help="the series cache")
    group.add_argument("--backend", choices=BACKENDS,
                       help="where data comes from: NBIA, the Imaging Data Commons (a local "
                       "index and public buckets) or auto (NBIA, with IDC for series files it "
                       "lists with the same count and as the fallback; the default)")
    group.add_argument("--idc-url", metavar="URL",
                       help="the S3 endpoint of IDC's buckets (default https://s3.amazonaws.com)")
    group.add_argument("--idc-index", type=Path, metavar="DIR",
                       help="a folder laid out like idc-index-data (default: that package's)")
    group.add_argument("--idc-index-url", metavar="URL",
                       help="where supplementary indices are fetched from (default: "
                       "idc-index-data's GitHub release folder)")
    group.add_argument("--idc-mirror", choices=("aws", "gcs"),
                       help="whose copy of IDC's buckets (default aws)")
    group.add_argument("--idc-version", metavar="N",
                       help="serve series as this IDC release had them (default: the index's)")
    group.add_argument("-v", "--verbose", action="store_true",
                       help="print retries and other progress messages on stderr")
    return parent


def _add_output_options(parser: argparse.ArgumentParser, *, default: str) -> None:
    group = parser.add_argument_group(f"output (default: {default})")
    formats = group.add_mutually_exclusive_group()
    formats.add_argument("--csv", action="store_const", const="csv", dest="format",
                         help="CSV, every column")
    formats.add_argument("--json", action="store_const", const="json", dest="format",
                         help="JSON records, every column")
    group.add_argument("--columns", type=_names, metavar="A,B,...",
                       help="the columns to show (default: a few for a table, all otherwise)")


def _add_selection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("series", nargs="*", type=_series_argument, metavar="UID|MANIFEST",
                        help="SeriesInstanceUIDs or .tcia manifests (or give query filters)")
    _add_filters(parser, SERIES_FILTERS, title="or the series a query finds")
    _add_cart_option(parser)


def _add_cart_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shared-cart", metavar="NAME",
                        help="the series of a cart shared from the NBIA portal (the name in its "
                        "link, ...?saved-cart=NAME)")


def _add_filters(parser: argparse.ArgumentParser, names: Sequence[str],
                 title: str = "filters") -> None:
    if not names:
        return
    group = parser.add_argument_group(title)
    for name in names:
        group.add_argument("--" + name.replace("_", "-"), help=FILTERS[name],
                           type=_uid if name.endswith("uid") else str,
                           metavar="UID" if name.endswith("uid") else "TEXT")


def _uid(value: str) -> str:
    try:
        return validate_uid(value, "UID")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _series_argument(value: str) -> str:
    return value if value.lower().endswith((".tcia", ".lock")) else _uid(value)


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {value!r}")
    return int(value)


def _names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


# -- shared helpers --------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> TCIAClient:
    """The client the options and environment describe."""
    from .client import TCIAClient

    return TCIAClient(**{key: getattr(args, key, None)
                         for key in ("api_url", "nlst_api_url", "cache_dir", "datacite_url",
                                     "backend", "idc_url", "idc_index", "idc_index_url",
                                     "idc_mirror", "idc_version")})


def _given(args: argparse.Namespace, names: Sequence[str]) -> dict[str, str]:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _print_frame(frame: pd.DataFrame, args: argparse.Namespace,
                 table_columns: Sequence[str] = ()) -> None:
    """Print ``frame`` as a table, CSV or JSON, as the output options ask."""
    columns = args.columns or (table_columns if args.format is None else None)
    if columns:
        unknown = [c for c in columns if c not in frame.columns]
        if unknown:
            raise UsageError(f"no column(s) {', '.join(unknown)}; the columns are "
                             f"{', '.join(frame.columns)}")
        frame = frame[list(columns)]
    if args.format == "csv":
        frame.to_csv(sys.stdout, index=False)
    elif args.format == "json":
        print(frame.to_json(orient="records", date_format="iso", indent=1))
    elif frame.empty:
        print("(nothing found)")
    else:
        print(frame.to_string(index=False))


def _selection(client: TCIAClient, args: argparse.Namespace) -> pd.DataFrame | list[str]:
    """The series the arguments name: UIDs and manifests (a list), or a query (a DataFrame)."""
    from .manifest import as_series_uids

    filters = _given(args, SERIES_FILTERS)
    if args.series and filters:
        raise UsageError("give series UIDs or manifests, or query filters, not both")
    if args.shared_cart and (args.series or filters):
        raise UsageError("give --shared-cart, or series UIDs, manifests or filters, not both")
    if not args.series and not filters and not args.shared_cart:
        raise UsageError("give series UIDs, a .tcia manifest, query filters such as "
                         "--collection, or --shared-cart")
    if args.shared_cart:
        frame = client.shared_cart(args.shared_cart)
        if frame.empty:
            raise ValueError(f"shared cart {args.shared_cart!r} is empty or unknown")
        return frame
    if args.series:
        return list(dict.fromkeys(uid for item in args.series for uid in as_series_uids(item)))
    frame = client.series(**filters)
    if frame.empty:
        raise ValueError("no series match " + " ".join(f"--{k.replace('_', '-')} {v}"
                                                        for k, v in filters.items()))
    return frame


def _one_line(message: object) -> str:
    if isinstance(message, OSError) and not isinstance(message, TCIAError) and message.filename:
        message = f"{message.filename}: {message.strerror}"  # not "[Errno 2] ..."
    return " ".join(str(message).split()) or type(message).__name__


# -- the subcommands -------------------------------------------------------------------------------


def _query(args: argparse.Namespace) -> int:
    """collections, modalities, ..., series: one query, printed."""
    cart = getattr(args, "shared_cart", None)
    if cart and _given(args, args.filters):
        raise UsageError("give query filters or --shared-cart, not both")
    with _client(args) as client:
        if cart:
            frame = client.shared_cart(cart)
        else:
            frame = getattr(client, args.method)(**_given(args, args.filters))
    _print_frame(frame, args, args.table_columns)
    return 0


def _search(args: argparse.Namespace) -> int:
    """Advanced search: the series found, printed or written to a manifest."""
    if args.manifest and (args.format or args.columns):
        raise UsageError("--manifest writes a file; it takes no --csv, --json or --columns")
    criteria = _given(args, SEARCH_OPTIONS)
    if args.all_modalities:
        criteria["all_modalities"] = True
    with _client(args) as client:
        frame = client.search(**criteria)
    if args.manifest:
        if frame.empty:
            raise ValueError("no series found; no manifest written")
        _write_manifests(frame, args.manifest)
    else:
        _print_frame(frame, args, args.table_columns)
    return 0


def _download(args: argparse.Namespace) -> int:
    """Download series; a summary, and exit status 1 when any series failed."""
    if is_lock_download(args):
        return download_lock(args, _client, UsageError)
    with _client(args) as client:
        series = _selection(client, args)
        layout = {"layout": args.layout} if args.layout else {}
        results = client.download(series, args.dest, on_error="return", workers=args.workers,
                                  progress=not args.quiet, **layout)
    counts = results["status"].value_counts()
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("downloaded", "cached", "failed"))
    print(f"{len(results)} series into {args.dest}: {summary}")
    failed = results[results["status"] == "failed"]
    for uid, error in zip(failed["SeriesInstanceUID"], failed["error"], strict=True):
        print(f"{args.prog}: failed: {uid}: {_one_line(error)}", file=sys.stderr)
    return 1 if len(failed) else 0


def _lock(args: argparse.Namespace) -> int:
    """Pin series to their bytes in a lockfile."""
    return run_lock(args, _client, _selection)


def _manifest(args: argparse.Namespace) -> int:
    """Write a .tcia manifest (two when NLST's series come with others)."""
    with _client(args) as client:
        series = _selection(client, args)
        if args.format != "tcia":
            if Path(args.output).is_dir() or args.output.endswith(("/", os.sep)):
                raise UsageError(f"--format {args.format} needs a file to write, not a folder")
            path = client.manifest(series, args.output, format=args.format)
            print(f"wrote {len(series)} series to {path}")
            return 0
    _write_manifests(series, args.output)
    return 0


def _write_manifests(series: Any, path: str) -> None:
    """Write the manifests of ``series`` and say where (NLST's apart: its own server)."""
    from .manifest import read_manifest, write_manifests

    for written in write_manifests(series, path):
        count = len(read_manifest(written).series_uids)
        print(f"wrote {count} series to {written}")


def _cite(args: argparse.Namespace) -> int:
    """Print the citations and licences of the series selected."""
    from .citation import citations, format_citations

    with _client(args) as client:
        series = _selection(client, args)
        if isinstance(series, list):
            uids, series = series, client.series_metadata(series)
            unknown = [uid for uid in uids if uid not in set(series["SeriesInstanceUID"])]
            if unknown:
                raise ValueError(f"the archive knows no series {', '.join(unknown)}")
        table = citations(series, datacite=client.datacite)
    if args.format is None and not args.columns:
        print(format_citations(table), end="")
    else:
        _print_frame(table, args)
    return 0


def _verify(args: argparse.Namespace) -> int:
    """Re-hash cached series; exit status 1 when any was damaged."""
    from .config import Settings
    from .retrieval.cache import SeriesCache

    if args.lock:
        return verify_lock(args, UsageError)
    try:
        args.series_uids = [validate_uid(u, "UID") for u in args.series_uids]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    cache = SeriesCache(Settings.from_env(cache_dir=getattr(args, "cache_dir", None)).cache_dir)
    uids = args.series_uids or cache.series_uids()
    bad = 0
    for uid in uids:
        if not cache.series_path(uid).is_dir():
            print(f"{args.prog}: not in the cache: {uid}", file=sys.stderr)
        elif not cache.verify(uid):
            print(f"{args.prog}: damaged, removed from the cache: {uid}", file=sys.stderr)
        else:
            continue
        bad += 1
    print(f"{len(uids) - bad} of {len(uids)} series verified in {cache.root}")
    return 1 if bad else 0


def _demo(args: argparse.Namespace) -> int:
    """Run the offline tour."""
    from .demo import run_demo

    if getattr(args, "api_url", None) and not args.collection:
        raise UsageError("--api-url needs --collection: the tour takes a CT series from it")
    # The environment is not read: the demo tours the sample archive unless told otherwise.
    run_demo(output=args.output, collection=args.collection,
             **{key: getattr(args, key, None) for key in ("api_url", "nlst_api_url", "cache_dir")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
