"""Child processes that die with their parent (Linux's ``PR_SET_PDEATHSIG``; elsewhere they
simply run): a model server or a training launcher must not outlive the run that started it,
even when that run is killed outright."""

from __future__ import annotations

import os
import signal
import socket
import sys

# Arms the signal in the child, checks its parent is still the one that started it (it could
# have died before the arming), then becomes the command. Done in a fresh interpreter rather
# than in a preexec_fn: code run between fork and exec in a multithreaded parent can deadlock.
LAUNCHER = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None).prctl(1, int(sys.argv[2]))\n"
    "os.getppid() == int(sys.argv[1]) or sys.exit(70)\n"
    "os.execvp(sys.argv[3], sys.argv[3:])"
)


def tied_to_this_process(command: list[str], sig: int = signal.SIGTERM) -> list[str]:
    """``command`` wrapped so that it gets ``sig`` when this process exits."""
    if sys.platform != "linux":
        return command
    return [sys.executable, "-c", LAUNCHER, str(os.getpid()), str(int(sig)), *command]


def die_with_parent(sig: int) -> None:
    """Ask for ``sig`` when this process's parent exits (for a process that was not started
    through ``tied_to_this_process``, e.g. a rank torchrun starts)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        pass


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, for a child process to listen on (a served model, a DDP rendezvous): two
    runs on one machine must not meet at a fixed port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
