"""Task messages make the round trip: in process when embedded, through RabbitMQ to `portal worker`."""

import os
import signal
import subprocess
import uuid

import dramatiq
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from portal.config import PROJECT_ROOT
from portal.infra.cache import RedisCache, get_cache
from portal.infra.metrics import actor_runs_key
from portal.services.health import wait_for_pong
from tests.conftest import VENV_BIN, stop_process_group, wait_until


def test_the_embedded_broker_runs_actors_on_worker_threads_in_this_process():
    import tasks
    from tasks.ping import ping

    assert type(tasks.broker).__name__ == "StubBroker"
    worker = dramatiq.Worker(tasks.broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        token = uuid.uuid4().hex
        before = int(get_cache().get(actor_runs_key("ping", "success")) or 0)
        ping.send(token)
        assert wait_for_pong(get_cache(), token, timeout_s=10)
        worker.join()  # the run is counted once the message is processed
        assert int(get_cache().get(actor_runs_key("ping", "success")) or 0) == before + 1
    finally:
        worker.stop()


@pytest.mark.integration
def test_a_message_goes_through_rabbitmq_to_portal_worker_and_back(rabbitmq_url, redis_url, cache_prefix):
    from tasks.ping import ping

    env = {
        **os.environ,
        "PORTAL_BROKER_URL": rabbitmq_url,
        "PORTAL_REDIS_URL": redis_url,
        "PORTAL_CACHE_PREFIX": cache_prefix,
    }
    worker = subprocess.Popen(
        [str(VENV_BIN / "portal"), "worker", "--processes", "1", "--threads", "1"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    broker = RabbitmqBroker(url=rabbitmq_url, confirm_delivery=True)
    try:
        broker.declare_queue(ping.queue_name)
        token = uuid.uuid4().hex
        # The actor's own message, sent on a real RabbitMQ broker; the worker process runs it.
        broker.enqueue(ping.message(token))
        cache = RedisCache(redis_url, cache_prefix)
        assert wait_for_pong(cache, token, timeout_s=30), worker_output(worker)
        # The worker process counted the run where the portal's /metrics reads it.
        runs = wait_until(
            lambda: cache.get(actor_runs_key("ping", "success")), timeout_s=10, what="a counted run"
        )
        assert runs == "1"
    finally:
        broker.close()
        stop_process_group(worker, signal.SIGTERM)


def worker_output(process: subprocess.Popen) -> str:
    stop_process_group(process, signal.SIGTERM)
    return process.stdout.read().decode(errors="replace")[-2000:] if process.stdout else ""


def test_portal_worker_refuses_to_start_without_a_broker_url():
    env = {key: value for key, value in os.environ.items() if key != "PORTAL_BROKER_URL"}
    result = subprocess.run([str(VENV_BIN / "portal"), "worker"], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "portal worker needs PORTAL_BROKER_URL" in result.stderr
