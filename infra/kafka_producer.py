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

from infra.kafka_batches import COMPRESSION

log = logging.getLogger("feedgrid.kafka.producer")


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
                await producer.stop()
