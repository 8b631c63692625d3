"""How big each bench runs: in full for `make bench`, or quick (`python -m bench --quick`, BENCH_QUICK=1):
small sizes, seconds each, so that tests/test_bench_quick.py can run every bench in `make test` and a bench
that no longer runs fails there. Quick figures prove the bench runs; only full ones are measurements."""

from __future__ import annotations

import os
import sys
from typing import TypeVar

T = TypeVar("T")

# `python -m bench.heartbeats --quick` too: the sizes are read as the bench modules are imported.
QUICK = os.environ.get("BENCH_QUICK") == "1" or "--quick" in sys.argv[1:]


def size(full: T, quick: T) -> T:
    return quick if QUICK else full
