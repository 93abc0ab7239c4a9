"""Child processes that never outlive their parent.

Services are started in their own session (so a Ctrl-C reaches only the parent, which stops them in order),
and on Linux they also get ``PR_SET_PDEATHSIG``: if the parent dies without stopping them (SIGKILL, a crash),
the kernel sends them SIGTERM instead of leaving orphans holding ports and stores.
"""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
