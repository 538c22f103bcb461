"""Run the sample archive by hand: python -m intake_tcia.testing --port 8080"""

from __future__ import annotations

import argparse
import tempfile
import threading
from pathlib import Path

from ._flavours import SERVER_FLAVOURS
from .idc_bucket import IDCBucketServer
from .idc_index import write_idc_index
from .server import ArchiveServer


def main(argv: list[str] | None = None) -> None:
    """Start the server, print its URLs and serve until Ctrl-C."""
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
    server = ArchiveServer(host=args.host, port=args.port, nlst_port=nlst_port,
                           compression="stored" if args.stored else "deflated",
                           verbose=not args.quiet, flavour=args.flavour)
    bucket = IDCBucketServer(server.archive, host=args.host, port=args.idc_port,
                             verbose=not args.quiet)
    with server, bucket, tempfile.TemporaryDirectory(prefix="intake-tcia-idc-") as folder:
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
        try:  # a Ctrl-C may come as soon as this line is out
            print("Ctrl-C to stop", flush=True)
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopped")


if __name__ == "__main__":
    main()
