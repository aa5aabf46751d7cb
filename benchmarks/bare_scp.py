"""A bare pynetdicom storage SCP for the ingest benchmark: it writes each data set as received and nothing else.

It has no policy, no database, no fsync and pynetdicom's default settings, so
its speed is the most that pynetdicom itself allows.

    python -m benchmarks.bare_scp PORT OUTPUT_DIR [--tls CERT KEY]
"""

from __future__ import annotations

import argparse
import logging
import ssl
from pathlib import Path

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from dicomd.listener import TRANSFER_SYNTAXES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="serve TLS with this certificate and key")
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    def handle_store(event) -> int:
        name = str(event.request.AffectedSOPInstanceUID)
        (options.output_dir / f"{name}.dcm").write_bytes(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title="PACS")
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    ae.maximum_associations = 16

    tls_context = None
    if options.tls:
        tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls_context.load_cert_chain(*options.tls)

    print("ready", flush=True)
    ae.start_server(
        ("127.0.0.1", options.port),
        evt_handlers=[(evt.EVT_C_STORE, handle_store)],
        ssl_context=tls_context,
    )


if __name__ == "__main__":
    main()
