"""Print a pip constraints file of every package installed in a Python environment.

    python scripts/freeze_constraints.py /path/to/venv/bin/python > constraints.txt

It is `pip freeze` of that environment without evoprune itself, with torch's local build tag
dropped (`torch==2.13.0+cpu` -> `torch==2.13.0`, which the CPU and CUDA wheels both satisfy).
"""

from __future__ import annotations

import datetime
import re
import subprocess
import sys

HEADER = """\
# Exact versions the test suite passed with; scripts/setup.sh installs with `-c constraints.txt`.
# pyproject.toml keeps the ranges a library should; this file pins one tested point inside them.
# Refresh: `bash scripts/test-latest.sh --lock` (fresh venv, newest allowed versions, fast tests;
# writes this file only when they pass), then run the whole suite and commit it.
# Made {date} from Python {python} by scripts/freeze_constraints.py.
"""


def constraints(python: str) -> str:
    frozen = subprocess.run([python, "-m", "pip", "freeze", "--exclude-editable"], check=True,
                            capture_output=True, text=True).stdout
    version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"], check=True,
                             capture_output=True, text=True).stdout.strip()
    lines = []
    for line in frozen.splitlines():
        if not line or line.startswith("#") or " @ " in line or line.lower().startswith("evoprune"):
            continue
        lines.append(re.sub(r"^(torch==[^+]+)\+\w+$", r"\1", line))
    header = HEADER.format(date=datetime.date.today().isoformat(), python=version)
    return header + "\n".join(sorted(lines, key=str.lower)) + "\n"


if __name__ == "__main__":
    sys.stdout.write(constraints(sys.argv[1] if len(sys.argv) > 1 else sys.executable))
