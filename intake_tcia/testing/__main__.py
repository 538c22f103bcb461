"""Run the sample archive by hand: ``python -m intake_tcia.testing --port 8080``."""

from __future__ import annotations

import argparse
import threading

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
    args = parser.parse_args(argv)
    nlst_port = args.nlst_port if args.nlst_port is not None else (args.port + 1 if args.port
                                                                    else 0)
    server = ArchiveServer(host=args.host, port=args.port, nlst_port=nlst_port,
                           compression="stored" if args.stored else "deflated",
                           verbose=not args.quiet)
    with server:
        print(f"NBIA v4 (main): {server.api_url}")
        print(f"NBIA v4 (NLST): {server.nlst_api_url}")
        print(f"DataCite:       {server.datacite_url}")
        print(f"try: curl '{server.api_url}getCollectionValues'")
        print(f"export INTAKE_TCIA_API_URL={server.api_url}")
        print(f"export INTAKE_TCIA_NLST_API_URL={server.nlst_api_url}")
        print("Ctrl-C to stop", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopped")


if __name__ == "__main__":
    main()
