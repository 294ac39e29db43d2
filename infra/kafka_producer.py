"""One Kafka producer per process for events published straight to a topic (no outbox).

Started on first use, so a process starts without Kafka; when the broker does not answer,
callers get :class:`KafkaUnavailable` within ``start_timeout`` seconds, and for
``retry_pause`` seconds after a failed start they get it at once instead of each waiting
for a connection that just failed. Once started, aiokafka reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError

from infra.kafka_batches import COMPRESSION

log = logging.getLogger("feedgrid.kafka.producer")

# How long a stopping producer waits for the broker to take what it still holds
STOP_DELIVERY_SECONDS = 5.0


async def stop_producer(producer: AIOKafkaProducer, within: float = STOP_DELIVERY_SECONDS) -> bool:
    """Stops ``producer``, giving the batches it still holds ``within`` seconds to be delivered.

    aiokafka's ``stop()`` waits for every batch the producer holds, and with the broker down
    it did not return: ``feedgrid up`` told to stop (Ctrl-C) after its broker had stopped was
    still waiting ten minutes later. Past ``within`` the batches fail (their senders get
    :class:`KafkaTimeoutError`) and the stop completes. Returns whether everything held was
    delivered."""
    stopping = asyncio.ensure_future(producer.stop())
    done, _ = await asyncio.wait({stopping}, timeout=within)
    if done:
        stopping.result()
        return True
    # aiokafka has no public way to give up on held batches. Its stop() waits for the
    # accumulator or the sender task, whichever ends first: the sender is cancelled (its
    # requests in flight end, their batches go back to the queue) and stop() closes the client.
    accumulator = producer._message_accumulator
    producer._sender.sender_task.cancel()
    async with asyncio.timeout(within):
        await stopping
    # Nothing sends any more: the held batches fail. A batch sent before is expected in the
    # pending set by the callback that takes it out when it ends. The batches' own futures
    # and those of send() have no reader left (the accumulator's wait does not read them):
    # read here, or asyncio logs each as an exception never retrieved. What send_batch handed
    # out (a shield of the batch's future) is its holder's to read.
    queued = [batch for batches in accumulator._batches.values() for batch in batches]
    accumulator._pending_batches.update(batch for batch in queued if batch._retry_count)
    held = {*queued, *accumulator._pending_batches}
    accumulator.fail_all(
        KafkaTimeoutError(f"not delivered within {within:g} s of the producer's stop")
    )
    for batch in held:
        for future in (batch.future, *(future for future, _ in batch._msg_futures)):
            if future.done() and not future.cancelled():
                future.exception()
    log.warning("kafka producer stopped with %d undelivered batches: the broker did not take "
                "them within %.1f s", len(held), within)  # fmt: skip
    return False


class KafkaUnavailable(Exception):
    """The broker did not take the events in time; nothing is known to be delivered."""


class SharedProducer:
    def __init__(
        self,
        bootstrap: str,
        *,
        client_id: str,
        start_timeout: float = 3.0,
        retry_pause: float = 1.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.start_timeout = start_timeout
        self.retry_pause = retry_pause
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._failed_at = -float("inf")
        self._failure = ""

    async def get(self) -> AIOKafkaProducer:
        """The started producer; :class:`KafkaUnavailable` when it cannot be started now."""
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is not None:
                return self._producer
            if time.monotonic() - self._failed_at < self.retry_pause:
                raise KafkaUnavailable(self._failure)
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                client_id=self.client_id,
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
                compression_type=COMPRESSION,
                max_batch_size=1024 * 1024,
                request_timeout_ms=15_000,
            )
            try:
                async with asyncio.timeout(self.start_timeout):
                    await producer.start()
            except BaseException as error:
                with contextlib.suppress(Exception):
                    await producer.stop()
                if not isinstance(error, Exception):
                    raise  # cancelled: no verdict on the broker
                self._failed_at = time.monotonic()
                self._failure = f"kafka at {self.bootstrap} does not answer: {error or 'timeout'}"
                log.warning("%s", self._failure)
                raise KafkaUnavailable(self._failure) from error
            self._producer = producer
            return producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await stop_producer(producer)
