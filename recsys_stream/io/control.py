"""Process-wide stop signal: ``recsys-stream run`` sets it on SIGTERM/SIGINT; sources then
end their input, so Bytewax finishes the epoch, snapshots and exits cleanly (a handler
that raised instead would make Bytewax abort without a snapshot)."""

from __future__ import annotations

import threading

STOP = threading.Event()
