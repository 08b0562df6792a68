"""Every built-in family is known whichever adapter module a process imported first."""

from __future__ import annotations

import subprocess
import sys


def test_every_family_after_importing_one_adapter_first():
    code = ("from evoprune.arch import llama\n"
            "from evoprune.arch.adapter import supported_model_types\n"
            "print(','.join(supported_model_types()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert set(out.split(",")) >= {"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "gemma2", "gemma3_text"}
