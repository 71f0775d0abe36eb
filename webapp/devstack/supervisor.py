"""Child processes for `make run`: started in their own sessions, output prefixed and colored per
process, stopped in a chosen order with escalating signals, and a child that dies on its own noticed.

Children get their own session so that Ctrl-C in the terminal reaches only the launcher, which then
stops them in order (the API and workers before the Redis they talk to) instead of all at once.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

from honcho.colour import get_colours
from honcho.printer import Message, Printer

PR_SET_PDEATHSIG = 1
RED = "31;1"


def _prctl():
    """prctl from libc, looked up before any fork (a child must not load libraries between fork and exec)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()


def _child_setup() -> None:
    # If the launcher is killed outright (SIGKILL, OOM), its children get SIGTERM instead of living on
    # as orphans that hold the ports and the Redis data directory.
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    argv: list[str]
    popen: subprocess.Popen
    colour: str | None
    # (signal, seconds to wait for exit) in order; the last step is always SIGKILL to the whole group.
    stop_steps: Sequence[tuple[int, float]] = ((signal.SIGTERM, 10.0),)
    stopping: bool = False
    pump: threading.Thread | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill_group(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Supervisor:
    def __init__(self, output: TextIO | None = None, name_width: int = 8, colour: bool = True):
        self.printer = Printer(output=output or sys.stdout, width=name_width, colour=colour)
        self.children: list[Child] = []
        self._colours = get_colours()
        # Re-entrant: a signal handler may print while the main thread is inside `say`.
        self._lock = threading.RLock()
        self._own_colour = next(self._colours)
        # Set by a second Ctrl-C: skip the polite stop steps and kill.
        self.hurry = threading.Event()

    def say(self, text: str, name: str = "swapline", colour: str | None = None) -> None:
        """A line of the launcher's own, in the same prefixed format as the children's."""
        self._write(Message("line", text, dt.datetime.now(), name, colour or self._own_colour))

    def _write(self, message: Message) -> None:
        with self._lock:
            try:
                self.printer.write(message)
            except (BrokenPipeError, ValueError):
                # Whoever read our output is gone (`make run | tee` after Ctrl-C): keep stopping the
                # children in order rather than dying on a print.
                pass

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
              stop_steps: Sequence[tuple[int, float]] = ((signal.SIGTERM, 10.0),)) -> Child:
        popen = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_child_setup)
        child = Child(name, argv, popen, next(self._colours), stop_steps)
        child.pump = threading.Thread(target=self._pump, args=(child,), name=f"pump-{name}", daemon=True)
        child.pump.start()
        self.children.append(child)
        self.say(f"event=child.start name={name} pid={popen.pid} cmd={_short(argv)}")
        return child

    def _pump(self, child: Child) -> None:
        stdout = child.popen.stdout
        assert stdout is not None  # started with stdout=PIPE
        for raw in iter(stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self._write(Message("line", line, dt.datetime.now(), child.name, child.colour))
        stdout.close()

    def dead(self) -> Child | None:
        """A child that exited without being asked to."""
        for child in self.children:
            if not child.stopping and not child.alive():
                return child
        return None

    def report_death(self, child: Child) -> None:
        if child.pump:
            child.pump.join(2)  # let its last words print before the verdict
        code = child.popen.returncode
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        self.say(f"event=child.died name={child.name} pid={child.pid} code={code}", colour=RED)
        self.say(f"!!! {child.name} stopped unexpectedly ({how}); stopping the stack", colour=RED)

    def stop(self, names: Sequence[str]) -> None:
        """Stop the named children together, each through its stop steps, then SIGKILL its group."""
        group = [c for c in self.children if c.name in names]
        for child in group:
            child.stopping = True
        pending = [c for c in group if c.alive()]
        step = 0
        while pending:
            steps = [c for c in pending if step < len(c.stop_steps)]
            if not steps:
                break
            for child in steps:
                sig, _ = child.stop_steps[step]
                self.say(f"event=child.stop name={child.name} pid={child.pid} "
                         f"signal={signal.Signals(sig).name}")
                child.send(sig)
            deadline = time.monotonic() + max(c.stop_steps[step][1] for c in steps)
            while time.monotonic() < deadline and any(c.alive() for c in steps) and not self.hurry.is_set():
                time.sleep(0.1)
            if self.hurry.is_set():
                break
            pending = [c for c in pending if c.alive()]
            step += 1
        for child in group:
            # Grandchildren (gunicorn workers, celery pool processes) share the child's process group.
            if child.alive():
                self.say(f"event=child.kill name={child.name} pid={child.pid}", colour=RED)
            child.kill_group()
            try:
                child.popen.wait(5)
            except subprocess.TimeoutExpired:
                pass
            if child.pump:
                child.pump.join(2)
            self.say(f"event=child.exit name={child.name} pid={child.pid} code={child.popen.returncode}")

    def stop_all(self, order: Sequence[Sequence[str]]) -> None:
        named = {n for group in order for n in group}
        for group in order:
            self.stop(group)
        self.stop([c.name for c in self.children if c.name not in named])


def _short(argv: list[str]) -> str:
    text = " ".join(os.path.basename(argv[0]) if i == 0 else a for i, a in enumerate(argv))
    return repr(text) if " " in text else text
