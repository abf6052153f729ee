"""How SIGTERM and Ctrl-C end a command: one line and the exit code of a process killed by the
signal, never a traceback. Training stops after the current step with a checkpoint
(``train.faults``); an evaluation has nothing to save and stops at its next check point
(:func:`stop_point`: a batch of features, an SGD step), within seconds."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """SIGTERM or Ctrl-C stopped the command; the message is one line. The CLI exits with
    128 + the signal number (143, 130), as a process killed by it would, so shells, schedulers
    and torchrun see an interrupted command, not a finished one."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


@dataclass
class _Stoppable:
    what: str
    then: str
    signum: int = 0

    def stop(self) -> Interrupted:
        return Interrupted(self.signum, f"stopped by {signal.Signals(self.signum).name} during {self.what}; {self.then}")


_open: list[_Stoppable] = []  # the stoppable blocks being run, innermost last


@contextmanager
def stoppable(what: str, then: str) -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT (also where training's handler, which stops after the
    next step, is installed) raise :class:`Interrupted` ("stopped by SIGINT during ``what``; ``then``")
    at the block's next :func:`stop_point`, or at its end; a second signal raises it at once.
    Raising at a check point, not inside whatever runs when the signal comes, keeps a stop in the
    middle of starting a DataLoader's workers from printing their half-built iterator's errors.
    The handlers that were there before are back after the block."""
    if threading.current_thread() is not threading.main_thread():  # Python delivers signals there only
        yield
        return
    block = _Stoppable(what, then)

    def handle(signum, frame):
        already, block.signum = block.signum, signum
        if already:
            raise block.stop()

    previous = {s: signal.signal(s, handle) for s in SIGNALS}
    _open.append(block)
    try:
        yield
        stop_point()
    finally:
        _open.remove(block)
        for s, handler in previous.items():
            signal.signal(s, handler)


def stop_point() -> None:
    """Raises :class:`Interrupted` when a stop signal came during the innermost :func:`stoppable`
    block; outside any, nothing."""
    if _open and _open[-1].signum:
        raise _open[-1].stop()
