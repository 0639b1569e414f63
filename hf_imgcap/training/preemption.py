# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""SIGTERM / SIGINT (cluster preemption, Ctrl-C) become a request to stop at the next step boundary.

The handler only sets a flag: the training loop saves a checkpoint where the state is consistent and exits 0,
so `--resume` continues exactly. A second signal while a stop is pending falls back to the default action.
"""

import logging
import signal
import threading

logger = logging.getLogger(__name__)


class StopRequest:
    """Context manager that turns SIGTERM/SIGINT into `requested == True`."""

    signals = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signal_name = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:  # asked twice: stop now
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        logger.warning("%s received: saving a checkpoint at the next step boundary, then exiting", self.signal_name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False
