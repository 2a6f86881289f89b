"""python -m dashboards [--out DIR] [--check]: export the dashboards' JSON, or check it is in sync."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dashboards import OUT, REPO, stale, write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder for the JSON (default {OUT.relative_to(REPO)})")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the JSON is out of date")
    args = parser.parse_args(argv)
    if args.check:
        names = stale(args.out)
        if names:
            print(f"dashboards: out of date in {args.out}: {', '.join(names)} (run make dashboards)", file=sys.stderr)
            return 1
        print(f"dashboards: {args.out} is in sync with dashboards/")
        return 0
    for path in write(args.out):
        print(f"dashboards: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
