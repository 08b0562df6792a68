"""Jane Austen's six novels, a test genre (19th-century fiction): from the Debian package `r-cran-janeaustenr`.

The package keeps each novel as an R character vector of lines in the lazy-load database
`data/Rdata.rdb` (index `Rdata.rdx`: a gzip-compressed serialized list of object offsets;
each object: a 4-byte length, then a zlib-compressed serialized R object), read here with the
`rdata` package. Documents are paragraphs (runs of non-empty lines), in novel order.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

from ..assets import AUSTEN_TEXT
from ..errors import UserError

NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")


def austen_package_dirs() -> list[Path]:
    """Where the R package may be: installed system-wide (apt), else unpacked by `evoprune fetch-assets`."""
    return AUSTEN_TEXT.dirs()


def austen_data_dir() -> Path | None:
    """The package's `data/` folder holding Rdata.rdb and Rdata.rdx, or None when it is not on this machine."""
    for folder in austen_package_dirs():
        data = folder / "data"
        if (data / "Rdata.rdb").is_file() and (data / "Rdata.rdx").is_file():
            return data
    return None


def austen_files() -> list[Path]:
    data = austen_data_dir()
    return [] if data is None else [data / "Rdata.rdb", data / "Rdata.rdx"]


def _unserialize(raw: bytes):
    import rdata

    return rdata.conversion.convert(rdata.parser.parse_data(raw))


def novel_lines(data: Path) -> dict[str, list[str]]:
    """Every novel's lines, by the package's object name."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rdata warns that a bare serialized object is "assumed RDS"
            index = _unserialize(gzip.decompress((data / "Rdata.rdx").read_bytes()))["variables"]
            database = (data / "Rdata.rdb").read_bytes()
            novels = {}
            for name in NOVELS:
                offset, length = (int(v) for v in index[name])
                record = database[offset:offset + length]
                (size,) = struct.unpack(">I", record[:4])
                raw = zlib.decompress(record[4:])
                if len(raw) != size:
                    raise ValueError(f"{name}: {len(raw)} bytes unpacked, {size} expected")
                novels[name] = [str(line) for line in _unserialize(raw)]
    except Exception as e:  # rdata, zlib and gzip raise many types for damaged files
        raise UserError(f"cannot read the Jane Austen novels in {data}: {e}; delete that folder and run "
                        "`evoprune fetch-assets` again") from None
    return novels


def austen_paragraphs() -> list[str]:
    """The novels' paragraphs (lines joined by spaces), novel after novel; [] when the package is absent."""
    data = austen_data_dir()
    if data is None:
        return []
    paragraphs: list[str] = []
    for lines in novel_lines(data).values():
        current: list[str] = []
        for line in [*lines, ""]:
            if line.strip():
                current.append(line.strip())
            elif current:
                paragraphs.append(" ".join(current))
                current = []
    return paragraphs
