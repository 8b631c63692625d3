import asyncio
import gc
from concurrent.futures import ThreadPoolExecutor

from portal.infra.heap import frozen_heap


def test_what_a_web_worker_built_at_start_is_frozen_out_of_the_collectors_reach():
    async def started() -> int:
        async with frozen_heap():
            return gc.get_freeze_count()

    try:
        with ThreadPoolExecutor(1) as pool:  # a loop of its own: the browser tests' may be running here
            frozen = pool.submit(asyncio.run, started()).result()
        # Everything this test process imported so far (pytest, the portal, its libraries) is frozen.
        assert frozen > 50_000
    finally:
        gc.unfreeze()
