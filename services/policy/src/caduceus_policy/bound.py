"""Evaluating a decision within a wall-clock bound on the event loop's own thread.

A decision takes well under a millisecond; handing it to a worker thread, so that the loop can
give up on it at the bound, costs more than the decision does on a busy machine. On the main
thread, with SIGALRM free, a decision runs in place under an interval timer instead: when the
bound passes, the timer's signal interrupts the evaluation with `DecisionOverdue`, at the next
Python instruction, where a worker thread would also have lost the GIL. Unlike a worker thread
that was given up on, the interrupted evaluation stops using the CPU.

Elsewhere (another thread, or a process whose SIGALRM someone else handles, such as a test
run under pytest-timeout) `InlineBound.available()` is false and callers use a worker thread.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class DecisionOverdue(BaseException):
    """The bound passed while evaluating. A BaseException: no `except Exception` on the way may swallow it."""


class InlineBound:
    """Runs a function under a SIGALRM timer; one at a time, on the main thread only."""

    def __init__(self) -> None:
        self._armed = False
        self._handler = self._on_alarm  # one bound method, so that `getsignal` can be compared with it

    def available(self) -> bool:
        """True when `run` may be used: on the main thread, with SIGALRM unhandled or handled by us."""
        if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
            return False
        return signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, self._handler)

    def run(self, function: Callable[[], T], seconds: float) -> T:
        """`function()`, or DecisionOverdue when it has not returned after `seconds`."""
        if signal.getsignal(signal.SIGALRM) is not self._handler:
            signal.signal(signal.SIGALRM, self._handler)
        started = time.monotonic()
        self._armed = True
        previous, interval = signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return function()
        finally:
            self._armed = False  # first: an alarm from here on finds nothing to interrupt
            if previous > 0:  # someone's timer was pending: give it back, less the time spent here
                signal.setitimer(signal.ITIMER_REAL, max(previous - (time.monotonic() - started), 1e-6), interval)
            else:
                signal.setitimer(signal.ITIMER_REAL, 0)

    def _on_alarm(self, signum: int, frame: object) -> None:
        if self._armed:
            self._armed = False
            raise DecisionOverdue()
