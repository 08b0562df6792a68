"""llama.cpp runs in a child process: a native crash there is a one-line error, never a dead test session.

The crashes here are real: the child reads address 0 (SIGSEGV) or aborts, as llama.cpp's AMX backend
does on quantized GGUFs on CPUs with AMX. They need no llama.cpp; the tests that load GGUF files in
llama.cpp skip without it.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from evoprune.errors import UserError
from evoprune.serving import engine_process, llamacpp
from evoprune.serving.engine_process import FAULT_ENV, EngineCrashed, EngineProcess, RemoteTraceback, cpu_has_amx
from evoprune.serving.llamacpp import repack_setting


def test_a_segfault_in_the_child_is_a_one_line_error_naming_the_file():
    with EngineProcess("/models/pruned/model.gguf", repack=False) as engine:
        assert engine.call(os.getpid) != os.getpid()
        with pytest.raises(EngineCrashed) as crash:
            engine.call(ctypes.string_at, 0)  # reads address 0 in C: a real segmentation fault
    message = str(crash.value)
    assert "\n" not in message
    assert "SIGSEGV" in message and "/models/pruned/model.gguf" in message and "string_at" in message
    assert isinstance(crash.value, UserError)


def test_an_abort_and_an_exit_are_errors_too():
    with EngineProcess("a.gguf") as engine:
        with pytest.raises(EngineCrashed, match="SIGABRT"):
            engine.call(os.abort)
    with EngineProcess("a.gguf") as engine:
        with pytest.raises(EngineCrashed, match="exit status 3"):
            engine.call(os._exit, 3)


def test_python_errors_in_the_child_are_raised_with_their_type_and_the_child_lives_on():
    with EngineProcess("a.gguf") as engine:
        with pytest.raises(ValueError) as error:
            engine.call(int, "not a number")
        assert isinstance(error.value.__cause__, RemoteTraceback)
        assert "invalid literal" in str(error.value.__cause__)
        assert engine.call(int, "7") == 7


def test_the_crash_message_advises_repack_off_only_where_it_applies(monkeypatch):
    monkeypatch.setattr(engine_process, "cpu_has_amx", lambda: True)
    with EngineProcess("q8.gguf", repack=True) as engine, pytest.raises(EngineCrashed, match="eval.repack=off"):
        engine.call(ctypes.string_at, 0)
    with EngineProcess("q8.gguf", repack=False) as engine, pytest.raises(EngineCrashed) as crash:
        engine.call(ctypes.string_at, 0)
    assert "eval.repack=off" not in str(crash.value)


def test_the_fault_hook_kills_the_child_with_the_named_signal(monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "getpid:SIGSEGV")
    with EngineProcess("a.gguf") as engine:
        assert engine.call(int, "1") == 1
        with pytest.raises(EngineCrashed, match="SIGSEGV"):
            engine.call(os.getpid)


AMX_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni amx_bf16 amx_tile amx_int8\n"
PLAIN_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse avx2 fma\n"


def test_amx_is_read_from_the_cpu_flags(tmp_path):
    (tmp_path / "amx").write_text(AMX_CPUINFO)
    (tmp_path / "plain").write_text(PLAIN_CPUINFO)
    assert cpu_has_amx(str(tmp_path / "amx"))
    assert not cpu_has_amx(str(tmp_path / "plain"))
    assert not cpu_has_amx(str(tmp_path / "missing"))


def test_repacking_is_off_by_default_on_amx_cpus_and_as_asked_elsewhere(monkeypatch):
    monkeypatch.setattr(llamacpp, "cpu_has_amx", lambda: True)
    assert repack_setting("auto") is False and repack_setting(None) is False
    assert repack_setting("on") is True and repack_setting("off") is False
    monkeypatch.setattr(llamacpp, "cpu_has_amx", lambda: False)
    assert repack_setting("auto") is True
    with pytest.raises(UserError, match="eval.repack must be one of auto, on, off"):
        repack_setting("maybe")


CRASHING_TESTS = '''
import ctypes

from evoprune.serving.engine_process import EngineProcess


def test_whose_engine_segfaults():
    with EngineProcess("fake.gguf") as engine:
        engine.call(ctypes.string_at, 0)


def test_after_it():
    assert True
'''


def test_a_test_whose_engine_segfaults_fails_and_the_session_goes_on(tmp_path):
    (tmp_path / "test_crashing.py").write_text(CRASHING_TESTS)
    session = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                              str(tmp_path / "test_crashing.py")], capture_output=True, text=True, timeout=300,
                             cwd=tmp_path)
    assert session.returncode == 1, session.stdout + session.stderr
    assert "1 failed, 1 passed" in session.stdout.splitlines()[-1]
    assert "EngineCrashed: llama.cpp died of SIGSEGV in `string_at` on fake.gguf" in session.stdout
