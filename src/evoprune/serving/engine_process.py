"""llama.cpp in a child process: a crash in native code ends the child, never the evoprune run or a test session.

llama.cpp can die of a signal where Python cannot catch it: on CPUs with AMX, its AMX weight-repacking
backend segfaults on quantized GGUFs (docs/serving.md). So every llama.cpp call of evoprune runs in
an `EngineProcess`: a fresh interpreter (`python -m evoprune.serving.engine_process IN OUT`) that runs
the module-level functions it is sent, one at a time, and keeps what they open (a loaded model) in
its own memory between calls. A child that dies mid-call becomes an `EngineCrashed`, a one-line
UserError naming the signal, the model files and the likely cause.

Messages travel over their own pipes, so what native code prints to stdout cannot corrupt them; the
child's stdout goes to the parent's stderr, and its progress bars and log lines appear as the
parent's would.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import traceback
from multiprocessing.connection import Connection, Pipe
from typing import Any, Callable

from ..errors import UserError

log = logging.getLogger(__name__)

# Fault injection for tests: "<function name>:<signal name>" makes the child kill itself with that signal
# when it is asked to run that function (e.g. "logits:SIGSEGV"), as a native crash inside it would.
FAULT_ENV = "EVOPRUNE_ENGINE_FAULT"


class EngineCrashed(UserError):
    """The llama.cpp child process died (a signal or an exit) while running a call."""


class RemoteTraceback(Exception):
    """The child's traceback of an exception re-raised in the parent (its `__cause__`)."""


class EngineProcess:
    """A child interpreter that runs llama.cpp work sent to it with `call`.

    Args:
        label: what the child works on (the GGUF file or files), named in the crash message.
        repack: whether llama.cpp's weight repacking was on (it decides the advice in the message).
    """

    def __init__(self, label: str, repack: bool | None = None):
        self.label, self.repack = label, repack
        child_in, self._send = Pipe(duplex=False)
        self._recv, child_out = Pipe(duplex=False)
        fds = (child_in.fileno(), child_out.fileno())
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        level = logging.getLogger("evoprune").getEffectiveLevel()
        self._proc = subprocess.Popen([sys.executable, "-m", __name__, str(fds[0]), str(fds[1]), str(level)],
                                      pass_fds=fds, stdin=subprocess.DEVNULL, stdout=_stderr_fd(), env=env)
        child_in.close()
        child_out.close()

    def call(self, fn: Callable, *args, **kwargs) -> Any:
        """`fn(*args, **kwargs)` run in the child; its exceptions are raised here.

        Raises:
            EngineCrashed: the child died before answering.
        """
        try:
            self._send.send((fn, args, kwargs))
            answer = self._recv.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            raise self._crashed(fn.__name__) from None
        if answer[0] == "error":
            raise answer[1] from RemoteTraceback(answer[2])
        return answer[1]

    def _crashed(self, what: str) -> EngineCrashed:
        try:
            code = self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait()
        self._close_pipes()
        died = f"of {_signal_name(-code)}" if code < 0 else f"with exit status {code}"
        advice = ("this CPU has AMX and weight repacking was on: run again with eval.repack=off"
                  if self.repack and cpu_has_amx() else
                  "a native crash in llama.cpp (on CPUs with AMX, its repacking backend crashes on quantized "
                  "GGUFs: see docs/serving.md); check the file with `llama-cli -m` or export it again")
        return EngineCrashed(f"llama.cpp died {died} in `{what}` on {self.label}; {advice}")

    def close(self) -> None:
        """Ask the child to end and wait for it (killed if it does not end within 30 s)."""
        if self._proc.poll() is None:
            try:
                self._send.send(None)
            except (BrokenPipeError, OSError):
                pass
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for conn in (self._send, self._recv):
            if not conn.closed:
                conn.close()

    def __enter__(self) -> "EngineProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        if getattr(self, "_proc", None) is not None and self._proc.poll() is None:
            self.close()


def run_isolated(fn: Callable, *args, label: str, repack: bool | None = None, **kwargs) -> Any:
    """`fn(*args, **kwargs)` in a child process of its own, which then ends; see `EngineProcess.call`."""
    with EngineProcess(label, repack) as engine:
        return engine.call(fn, *args, **kwargs)


def cpu_has_amx(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU has Intel AMX (the `amx_tile` / `amx_int8` flags Linux reports)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_tile", "amx_int8"})
    except OSError:
        pass
    return False


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _stderr_fd() -> int:
    """The file descriptor the child's stdout goes to: the parent's stderr."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # a replaced sys.stderr without a descriptor
        return 2


def _serve(conn_in: Connection, conn_out: Connection) -> None:
    """The child's loop: run each call sent, answer with its result or exception, until told to end."""
    fault = os.environ.get(FAULT_ENV, "")
    while True:
        try:
            message = conn_in.recv()
        except EOFError:  # the parent is gone
            return
        if message is None:
            return
        fn, args, kwargs = message
        if fault and fault.split(":")[0] == fn.__name__:
            os.kill(os.getpid(), getattr(signal, fault.split(":")[1]))
        try:
            answer = ("ok", fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the parent
            answer = ("error", _portable(e), "".join(traceback.format_exception(e)))
        conn_out.send(answer)


def _portable(error: BaseException) -> BaseException:
    """`error`, or a RuntimeError saying what it was if it cannot be pickled."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def _main(argv: list[str]) -> None:
    level = int(argv[2]) if len(argv) > 2 else logging.WARNING
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")  # as the CLI logs
    logging.getLogger("evoprune").setLevel(level)
    _serve(Connection(int(argv[0])), Connection(int(argv[1])))


if __name__ == "__main__":
    _main(sys.argv[1:])
