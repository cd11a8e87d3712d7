"""What the controller reads of the ``python -m bytewax.run`` process it runs in.

Role: the one place that touches a Bytewax surface with no public API. Bytewax
offers no way for a flow to learn the options ``bytewax.run`` was started with,
and the controller needs three of them: the epoch interval (``-s``: its inputs end
each epoch together), the recovery directory (``-r``: where it records where the
directory began and claims it) and the process id (``-i``, or the index under
``bytewax.testing -p N``). They are read from ``bytewax.run``'s module globals,
which are private: ``tests/flow/test_flow.py`` runs ``bytewax.run`` for real and
fails loudly if they move. And how the process stops: Bytewax installs nothing for
SIGTERM (``stop_on_sigterm`` ends the inputs instead, a clean finish).
"""

from __future__ import annotations

import _thread
import logging
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from dataflow.adapters.sources import STOP_REQUESTED

log = logging.getLogger(__name__)


def _bytewax_run_kwargs() -> dict[str, Any] | None:
    """What ``python -m bytewax.run`` parsed from its command line, if this process is one.

    ``bytewax.run`` works its options out into its module's ``kwargs`` before it
    imports the flow; ``python -m bytewax.testing -p N`` runs N of those. Elsewhere
    (``bytewax.testing.run_main``, ``cluster_main``) ``None``. Bytewax offers no API
    for it: this reads a private module global, checked by ``tests/flow``.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is None or spec.name != "bytewax.run":
        return None
    kwargs = getattr(main, "kwargs", None)
    return kwargs if isinstance(kwargs, dict) else None


def bytewax_epoch_interval() -> timedelta | None:
    """The epoch interval of the ``python -m bytewax.run`` this process is, if it is one.

    ``-s``, or 10 s without recovery; ``None`` elsewhere: the inputs' epochs are left
    unaligned.
    """
    interval = (_bytewax_run_kwargs() or {}).get("epoch_interval")
    return interval if isinstance(interval, timedelta) and interval > timedelta(0) else None


def bytewax_recovery() -> tuple[Path | None, int]:
    """The recovery directory (``-r``) of this ``bytewax.run`` process, and its process id."""
    kwargs = _bytewax_run_kwargs() or {}
    config = kwargs.get("recovery_config")
    directory = getattr(config, "db_dir", None)
    process = kwargs.get("process_id")
    return (None if directory is None else Path(directory),
            process if isinstance(process, int) else 0)  # fmt: skip


#: How long a requested stop may take before the controller is interrupted as by Ctrl-C
#: (the last resort: a process of a cluster whose other processes were not asked to stop
#: cannot finish the dataflow alone).
STOP_GRACE_S: Final = 10.0


def stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM: end the inputs, so the dataflow finishes cleanly (status 0), one log line.

    Bytewax then snapshots the last epoch, the outbox flushes and commits, and
    ``bytewax.run`` returns. A second SIGTERM, or ``STOP_GRACE_S`` without finishing,
    interrupts it as Ctrl-C does (status 130, with Bytewax's traceback).
    """
    if STOP_REQUESTED.is_set():
        _thread.interrupt_main()
        return
    STOP_REQUESTED.set()
    log.info("controller stopping: SIGTERM received; the inputs end here, the last epoch is "
             "snapshotted, then the process exits with status 0")  # fmt: skip
    timer = threading.Timer(STOP_GRACE_S, _thread.interrupt_main)
    timer.daemon = True
    timer.start()
