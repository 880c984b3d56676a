"""The served-log writer process under SCHED_IDLE: experiment of bench/logging_overhead.py `--idle`.

The same writer (`featuremart.servedlog.sink`), its scheduling policy set to SCHED_IDLE before it starts its
threads: any normal task that wakes up (the reader back from Redis, Redis itself) preempts it at once, where a
normal (or niced) writer may keep the core until its slice ends.
"""

from __future__ import annotations

import os
import sys

from featuremart.servedlog import sink

if __name__ == "__main__":
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    sys.exit(sink.main(sys.argv[1:]))
