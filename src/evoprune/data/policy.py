"""The Debian Policy Manual, a test genre (technical standard): from the Debian package `debian-policy`.

The package ships the manual as Sphinx's plain-text rendering, `policy.txt.gz`: paragraphs wrapped at
70 columns, headings underlined with `=`, `-` or `*`, lists as `* ` items, literal blocks and nested
material indented, footnotes as `[n] ` paragraphs. Documents are the manual's prose paragraphs, in
order: wrapped lines joined, footnote markers removed; headings, lists, indented blocks, paragraphs
of fewer than `MIN_WORDS` words and the closing license chapter (the GPL's notice) are left out.
"""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path

from ..assets import POLICY_TEXT
from ..errors import UserError

MIN_WORDS = 8  # "Released August, 1996." and similar stubs are not prose
UNDERLINE = re.compile(r"^([=\-*~^\"#])\1+$")
LIST_ITEM = re.compile(r"^(?:[*\-+] |\d+\. |[a-z]\. )")
FOOTNOTE = re.compile(r"^\[(\d+|\*|#)\] ")
FOOTNOTE_MARK = re.compile(r"\s*\[\d+\]")
LICENSE_CHAPTER = re.compile(r"^\d+\. License$")


def policy_file() -> Path | None:
    """`policy.txt.gz` of an installed or fetched `debian-policy`, or None when it is not on this machine."""
    found = POLICY_TEXT.found()
    return None if found is None else found / POLICY_TEXT.marker


def policy_files() -> list[Path]:
    found = policy_file()
    return [] if found is None else [found]


def prose_paragraphs(text: str) -> list[str]:
    """The prose paragraphs of a Sphinx plain-text document (see the module docstring)."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.rstrip().splitlines()
        if not lines or not lines[0].strip():
            continue
        if len(lines) >= 2 and UNDERLINE.match(lines[-1].strip()):  # a heading
            if LICENSE_CHAPTER.match(lines[0].strip()):
                break
            continue
        first = lines[0]
        if FOOTNOTE.match(first):
            first = FOOTNOTE.sub("", first)
            rest = [line[4:] for line in lines[1:] if line.startswith("    ") and not line.startswith("     ")]
            if len(rest) != len(lines) - 1:  # a footnote holding a list or a literal block
                continue
            lines = [first, *rest]
        if first.startswith(" ") or LIST_ITEM.match(first) or any(line.startswith(" ") for line in lines[1:]):
            continue
        prose = FOOTNOTE_MARK.sub("", " ".join(line.strip() for line in lines))
        if len(prose.split()) >= MIN_WORDS:
            paragraphs.append(prose)
    return paragraphs


def policy_paragraphs() -> list[str]:
    """The manual's prose paragraphs, in order; [] when the package is absent."""
    path = policy_file()
    if path is None:
        return []
    try:
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:  # a damaged file
        raise UserError(f"cannot read the Debian Policy Manual in {path}: {e}; delete {path.parent} and run "
                        "`evoprune fetch-assets` again") from None
    return prose_paragraphs(text)
