"""Run every benchmark, or those named on the command line: `python -m benchmarks [NAME ...]`."""

import sys

from benchmarks import ingest, portal_pages, soak

BENCHMARKS = {
    "portal-pages": portal_pages.main,
    "ingest": ingest.main,
    "soak": soak.main,
}


def main(names: list[str]) -> int:
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark {', '.join(unknown)}: use {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    for name in names or BENCHMARKS:
        print(f"\n## {name}\n", flush=True)
        BENCHMARKS[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
