"""The web worker's heap, frozen once the app is built."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


@asynccontextmanager
async def frozen_heap() -> AsyncIterator[None]:
    """Move what the app built at start (modules, pages, the API: hundreds of thousands of objects, none of
    them garbage) out of the collector's reach. Python's full collections otherwise walk all of it, each a
    pause of tens to hundreds of milliseconds for every request in flight. The server builds the app in each
    worker after forking, so the freeze is done here, not before the fork."""
    gc.collect()
    gc.freeze()
    yield
