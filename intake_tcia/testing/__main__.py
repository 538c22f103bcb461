"""Run the sample archive by hand: python -m intake_tcia.testing --port 8080"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from ._flavours import SERVER_FLAVOURS
from .idc_bucket import IDCBucketServer
from .idc_index import write_idc_index
from .server import ArchiveServer


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (``kill``, a container or service stopping) ends the run as Ctrl-C does, so the
    temporary folders are removed; its default action would leave them behind."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Start the server, print its URLs and serve until Ctrl-C or SIGTERM; the exit status."""
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    parser = argparse.ArgumentParser(prog="python -m intake_tcia.testing", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="main host port (default: free)")
    parser.add_argument("--nlst-port", type=int, default=None,
                        help="NLST host port (default: --port + 1, or free)")
    parser.add_argument("--stored", action="store_true", help="serve zips uncompressed")
    parser.add_argument("--quiet", action="store_true", help="do not log requests")
    parser.add_argument("--idc-port", type=int, default=0,
                        help="port of the IDC bucket's S3 endpoint (default: free)")
    parser.add_argument("--flavour", default="v4", choices=sorted(SERVER_FLAVOURS),
                        help="the API dialect to answer in (default v4)")
    args = parser.parse_args(argv)
    nlst_port = args.nlst_port if args.nlst_port is not None else (args.port + 1 if args.port
                                                                    else 0)
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(ArchiveServer(
                host=args.host, port=args.port, nlst_port=nlst_port, verbose=not args.quiet,
                compression="stored" if args.stored else "deflated", flavour=args.flavour))
            bucket = stack.enter_context(IDCBucketServer(
                server.archive, host=args.host, port=args.idc_port, verbose=not args.quiet))
        except OSError as exc:  # a port that is taken, an interface that is not there
            print(f"{parser.prog}: error: cannot listen on {args.host} "
                  f"({exc.strerror or exc}); choose other ports (--port, --nlst-port, "
                  "--idc-port; 0 picks free ones)", file=sys.stderr)
            return 1
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="intake-tcia-idc-"))
        try:
            _serve(args, server, bucket, folder)
        except KeyboardInterrupt:
            print("stopped")
    return 0


def _serve(args: argparse.Namespace, server: ArchiveServer, bucket: IDCBucketServer,
           folder: str) -> None:
    """Print the URLs and settings, then wait for Ctrl-C (KeyboardInterrupt)."""
    index = write_idc_index(Path(folder) / "idc-index", server.archive)
    print(f"NBIA {args.flavour} (main): {server.api_url}")
    print(f"NBIA {args.flavour} (NLST): {server.nlst_api_url}")
    if args.flavour == "legacy":
        print(f"api_key header: {server.api_key}")
    print(f"DataCite:       {server.datacite_url}")
    print(f"IDC bucket (S3): {bucket.url}{bucket.bucket}")
    print(f"try: curl '{server.api_url}getCollectionValues'")
    print(f"     s5cmd --no-sign-request --endpoint-url {bucket.url} ls 's3://{bucket.bucket}/*'")
    print("point clients, catalogs and tcia:// at it (in the shell that runs them), for")
    print("either backend (INTAKE_TCIA_BACKEND=nbia, idc or auto):")
    settings = {**server.environ, **bucket.environ, "INTAKE_TCIA_IDC_INDEX": str(index)}
    for variable, value in settings.items():
        print(f"export {variable}={value}")
    print("Ctrl-C to stop", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    sys.exit(main())
