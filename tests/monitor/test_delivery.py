"""Keyed delivery (:func:`opsq.engines.alerts.deliver`) against real Redis and a real receiver.

Celery with the Redis broker can run one message twice at the same time: kombu puts a
message back in its queue once it has been unacknowledged longer than the visibility
timeout, even while a live worker still runs it (and ``acks_late`` keeps every
notification unacknowledged until it returns). Both copies carry the same task id.
These tests run such copies by hand, in threads of one process, so the only thing
between them is the claim in Redis.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from opsq.core import keys
from opsq.core.claims import holder_token
from opsq.core.config.alerts import AlertsSettings
from opsq.core.errors import TemporaryError
from opsq.engines.alerts import DeliveryOutcome, deliver
from opsq.engines.alerts.message import transition_message
from tests.monitor.test_notifiers import NOW, TRANSITION
from tests.support.receivers import HttpReceiver

KEY = "t-abc:hook:firing"


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    server = HttpReceiver().start()
    yield server
    server.stop()


def settings_for(receiver: HttpReceiver) -> AlertsSettings:
    return AlertsSettings.model_validate(
        {"notifiers": {"hook": {"kind": "webhook", "url": f"{receiver.url}/hook"}}}
    )


def job() -> dict[str, Any]:
    message = transition_message(TRANSITION, KEY, "firing", now=NOW)
    return {"notifier": "hook", "message": message.to_dict()}


def in_thread(call: Callable[[], DeliveryOutcome]) -> tuple[threading.Thread, list[Any]]:
    """Run *call* in a thread; the list gets its outcome or the exception it raised."""
    got: list[Any] = []

    def run() -> None:
        try:
            got.append(call())
        except Exception as exc:
            got.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, got


def test_a_second_copy_of_a_running_task_does_not_send(
    redis_client: redis.Redis[str], receiver: HttpReceiver
) -> None:
    """Two copies of one task (same id) at once: the copy that comes second while the
    first is still waiting for the receiver neither sends nor takes the claim over; it
    is told to retry, and finds the key delivered once the first one is through. (The
    claim used to let any holder of the same task id in, so both sent.)"""
    settings = settings_for(receiver)
    receiver.hold = threading.Event()
    first, first_got = in_thread(lambda: deliver(redis_client, settings, job(), task_id="t1"))
    assert receiver.wait_for(lambda r: len(r.received) == 1, 10)
    second, second_got = in_thread(lambda: deliver(redis_client, settings, job(), task_id="t1"))
    second.join(10)
    receiver.hold.set()
    first.join(10)
    second.join(10)

    assert [x.key for x in receiver.received] == [KEY], "the second copy sent too"
    assert isinstance(second_got[0], TemporaryError), second_got
    assert "being delivered" in str(second_got[0])
    assert first_got[0].result == "sent"
    assert [x.key for x in receiver.accepted] == [KEY]
    again = deliver(redis_client, settings, job(), task_id="t1")
    assert again.result == "duplicate"
    assert not redis_client.exists(keys.notify_claim(KEY))


def test_a_claim_whose_holder_process_died_is_taken_over_at_once(
    redis_client: redis.Redis[str], receiver: HttpReceiver
) -> None:
    """A worker killed mid-send leaves its claim; the redelivered task (or any copy) on
    the same host finds the holder's process gone and sends at once, without waiting
    for the lease to run out."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    token = holder_token("t1", pid=int(dead.stdout))
    redis_client.set(keys.notify_claim(KEY), token, ex=600)

    outcome = deliver(redis_client, settings_for(receiver), job(), task_id="t2")

    assert outcome.result == "sent"
    assert [x.key for x in receiver.accepted] == [KEY]
    assert not redis_client.exists(keys.notify_claim(KEY))


def test_a_claim_held_by_a_live_process_or_another_host_waits_for_its_lease(
    redis_client: redis.Redis[str], receiver: HttpReceiver
) -> None:
    """Whether a holder on another host is alive cannot be told from here, and this
    process is alive: both claims are respected until the lease expires, and a copy
    that gave up does not release a claim it does not hold."""
    settings = settings_for(receiver)
    for token in (holder_token("t1"), holder_token("t1", scope="elsewhere", pid=1)):
        redis_client.set(keys.notify_claim(KEY), token, ex=600)
        with pytest.raises(TemporaryError, match="being delivered") as caught:
            deliver(redis_client, settings, job(), task_id="t1")
        assert caught.value.delay is not None
        assert 0 < caught.value.delay <= 600
        assert redis_client.get(keys.notify_claim(KEY)) == token
    assert receiver.received == []


def test_a_failed_send_releases_only_its_own_claim(
    redis_client: redis.Redis[str], receiver: HttpReceiver
) -> None:
    """A receiver error releases the claim (the retry may go at once), and the key is
    not marked delivered."""
    receiver.status = 503
    with pytest.raises(TemporaryError, match="503"):
        deliver(redis_client, settings_for(receiver), job(), task_id="t1")
    assert not redis_client.exists(keys.notify_claim(KEY))
    assert not redis_client.exists(keys.notify_done(KEY))
    receiver.status = 200
    assert deliver(redis_client, settings_for(receiver), job(), task_id="t1").result == "sent"
