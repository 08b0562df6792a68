"""The command line of a script that renders a docs page from the code: write it, or `--check` that it is current."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable


def write_or_check(page: Path, render: Callable[[], str], script: str, description: str,
                   argv: list[str] | None = None) -> int:
    """Write `render()` to `page`; with `--check`, exit status 1 (naming `script`) when `page` differs from it."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--check", action="store_true", help=f"only check that {page.name} is up to date")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not page.is_file() or page.read_text() != text:
            print(f"{page} is out of date: run python {script}", file=sys.stderr)
            return 1
        return 0
    page.write_text(text)
    print(f"wrote {page}")
    return 0
