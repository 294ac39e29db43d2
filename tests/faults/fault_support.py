"""Real processes and real Kafka positions for the fault tests.

A fault test starts what it breaks: a ``feedgrid api`` or ``feedgrid worker`` process (output
in a log file, signalled by its pid), or a Kafka broker (or three-node cluster) of its own on
free ports, so the shared broker on 9092 that other tests use is never stopped. Everything a
test starts, it stops.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Literal

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from deploy.local_kafka import CLUSTER_SIZE, CONTROLLER_PORT_OFFSET, MARKER_NAME, kafka_paths
from schemas.settings import Settings

REPOSITORY = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def feedgrid_environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The FEEDGRID_* variables that make a child process use the test's settings."""
    values = {
        "FEEDGRID_DATABASE_URL": settings.database_url,
        "FEEDGRID_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "FEEDGRID_CLICKHOUSE_URL": settings.clickhouse_url,
        "FEEDGRID_TOPIC_PREFIX": settings.topic_prefix,
        "FEEDGRID_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "FEEDGRID_TOPIC_REPLICATION": str(settings.topic_replication),
        "FEEDGRID_SIGNING_KEY_DIR": str(settings.signing_key_dir),
        "FEEDGRID_VAR_DIR": str(settings.var_dir),
        "FEEDGRID_RELAY_IDLE_SECONDS": str(settings.relay_idle_seconds),
        "FEEDGRID_LOG_FORMAT": "console",
    }
    if settings.admin_token:
        values["FEEDGRID_ADMIN_TOKEN"] = settings.admin_token
    return os.environ | values | extra


# ------------------------------------------------------------------------------ processes


class ChildProcess:
    """One child process, started and signalled by pid; its output goes to a log file (a
    pipe nobody reads would block it)."""

    def __init__(self, arguments: list[str], environment: dict[str, str], log_path: Path) -> None:
        """The process runs in the log's directory: what it writes to its working directory
        (Faust's ``<app>.worker-data``) stays in the test's temporary directory."""
        self.arguments = arguments
        self.environment = environment
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"\n===== {time.strftime('%H:%M:%S')} start =====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.arguments,
                env=self.environment,
                cwd=self.log_path.parent,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed, the process is just gone."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit status, None if never run."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        return self.process.returncode

    def log_tail(self, characters: int = 4000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-characters:]


class WorkerProcess(ChildProcess):
    """``feedgrid worker``: the Faust agents and the ClickHouse sink, metrics on a free port."""

    def __init__(self, settings: Settings, log_path: Path, **tuning: str) -> None:
        self.metrics_port = free_port()
        environment = feedgrid_environment(
            settings,
            FEEDGRID_STREAM_METRICS_PORT=str(self.metrics_port),
            # A killed worker stays in the consumer group until its session times out.
            FEEDGRID_STREAM_SESSION_TIMEOUT_SECONDS="6",
            **tuning,
        )
        super().__init__([sys.executable, "-m", "deploy.cli", "worker"], environment, log_path)

    def metric(self, name: str) -> float:
        """The sum of every sample whose line starts with ``name`` (labels included)."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#")
        )


class ApiProcess(ChildProcess):
    """``feedgrid api`` (HTTP API and outbox relay, no embedded worker) on a free port."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.port = free_port()
        super().__init__(
            [sys.executable, "-m", "deploy.cli", "api", "--port", str(self.port)],
            feedgrid_environment(settings),
            log_path,
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 120) -> None:
        """Until the API answers (uvicorn serves only once the lifespan start finished)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise AssertionError(f"feedgrid api exited at start:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"feedgrid api not answering after {timeout}s:\n{self.log_tail()}")


class _LocalKafka:
    """Kafka of the test's own (own var dir, free ports), driven through the same launcher as
    the shared broker (``python -m deploy.local_kafka``). Its jars are the shared
    installation's, linked rather than resolved again by Maven."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.environment = os.environ | {"FEEDGRID_VAR_DIR": str(root)}
        shared_libs = kafka_paths().libs
        own_libs = root / "kafka" / "libs"
        if (shared_libs / MARKER_NAME).exists() and not own_libs.exists():
            own_libs.parent.mkdir(parents=True, exist_ok=True)
            own_libs.symlink_to(shared_libs, target_is_directory=True)

    @staticmethod
    def _free_ports(count: int, first_choice: int | None = None) -> int:
        """A port ``p`` with ``p .. p+count-1`` and their controller companions all free."""
        candidates = ([first_choice] if first_choice else []) + [free_port() for _ in range(50)]
        for port in candidates:
            wanted = [port + step for step in range(count)]
            wanted += [each + CONTROLLER_PORT_OFFSET for each in wanted]
            if max(wanted) < 65_536 and all(_port_is_free(each) for each in wanted):
                return port
        raise RuntimeError(f"no {count} free port pairs for a broker of the test's own")

    def _launcher(self, *arguments: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "deploy.local_kafka", *arguments],
            env=self.environment,
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"deploy.local_kafka {' '.join(arguments)} failed: {result.stdout}{result.stderr}"
            )
        return result.stdout


class OwnBroker(_LocalKafka):
    """One broker of the test's own: the single-node launcher on a free port pair."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.port = self._free_ports(1)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._launcher("start", "--port", str(self.port), "--timeout", "180")

    def stop(self) -> None:
        """SIGTERM to the broker's pid (SIGKILL after 30 s); the data directory stays."""
        self._launcher("stop")


class KafkaCluster(_LocalKafka):
    """The three-node cluster of ``feedgrid kafka cluster`` (replication 3, min ISR 2) on
    consecutive free ports (19092-19094 when free), in the test's own var dir."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.first_port = self._free_ports(CLUSTER_SIZE, first_choice=19092)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.first_port + step}" for step in range(CLUSTER_SIZE))

    def start(self) -> None:
        """Starts every node not running (a killed one rejoins); returns once all three
        answer and see each other."""
        self._launcher("cluster", "start", "--first-port", str(self.first_port), "--timeout", "240")

    def kill(self, node_id: int) -> None:
        """SIGKILL to one node's JVM: a crash, nothing flushed or handed over."""
        self._launcher("cluster", "kill", str(node_id))

    def stop(self) -> None:
        self._launcher("cluster", "stop", "--timeout", "20")

    def node_log(self, node_id: int) -> Path:
        return self.root / "kafka-cluster" / f"node-{node_id}" / "server.log"


# ------------------------------------------------------------------------------ kafka


def access_events_group(settings: Settings) -> str:
    """The consumer group whose committed offsets say what the worker has stored: its batch
    pipeline's, which reads access events and heartbeats below Faust (streams/context.py)."""
    return f"{settings.topic_prefix}worker-batch"


class KafkaPositions:
    """Committed offsets of a consumer group and end offsets of a topic, summed over the
    partitions (one admin client and one consumer, reused for every look)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, group: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = [TopicPartition(topic, partition) for partition in range(partitions)]
        self.group = group
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)

    async def __aenter__(self) -> KafkaPositions:
        await self._admin.start()
        await self._consumer.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._consumer.stop()
        await self._admin.close()

    async def committed(self) -> int:
        offsets = await self._admin.list_consumer_group_offsets(self.group)
        mine = [meta.offset for tp, meta in offsets.items() if tp.topic == self.topic]
        return sum(offset for offset in mine if offset > 0)

    async def end(self) -> int:
        return sum((await self._consumer.end_offsets(self.partitions)).values())

    async def wait_committed(self, at_least: int, timeout: float) -> int:
        """Polls the committed total until it reaches ``at_least``; returns the last seen.

        ``timeout`` bounds a stall, not the whole wait: while the total keeps moving the wait
        goes on, so a slow (loaded) machine is no failure but a stuck consumer is.
        """
        committed = await self._committed_or(0)
        stalled_since = time.monotonic()
        while committed < at_least and time.monotonic() - stalled_since < timeout:
            await asyncio.sleep(0.2)
            now = await self._committed_or(committed)
            if now != committed:
                committed, stalled_since = now, time.monotonic()
        return committed

    async def _committed_or(self, last: int) -> int:
        """The committed total, or ``last`` while the group's coordinator cannot answer (it
        moves to another broker when its own dies)."""
        try:
            return await asyncio.wait_for(self.committed(), 15)
        except (KafkaError, OSError, TimeoutError):
            return last

    async def leaders(self) -> dict[int, int]:
        """Leader broker of each partition of the topic."""
        (described,) = await self._admin.describe_topics([self.topic])
        return {entry["partition"]: entry["leader"] for entry in described["partitions"]}

    async def replicas(self) -> dict[int, tuple[int, list[int]]]:
        """(replica count, in-sync replicas) of each partition of the topic."""
        (described,) = await self._admin.describe_topics([self.topic])
        return {
            entry["partition"]: (len(entry["replicas"]), sorted(entry["isr"]))
            for entry in described["partitions"]
        }

    async def replication_by_topic(self, prefix: str) -> dict[str, int]:
        """Fewest replicas of any partition, for every topic whose name starts with ``prefix``
        (the worker's own topics too, such as the tables' changelogs Faust creates)."""
        names = [name for name in await self._admin.list_topics() if name.startswith(prefix)]
        return {
            described["topic"]: min(len(entry["replicas"]) for entry in described["partitions"])
            for described in await self._admin.describe_topics(names)
        }

    async def coordinator(self) -> int:
        """The broker coordinating the consumer group (it holds the committed offsets)."""
        return await self._admin.find_coordinator(self.group)


async def produce_batched(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes, bytes]],
    partitions: int,
    *,
    acks: Literal[1, "all"] = 1,
    pace: Callable[[int], Awaitable[object]] | None = None,
) -> int:
    """Publishes pre-serialised (key, value) records as fast as Kafka takes them.

    Records go into one batch per partition (lz4) handed whole to the producer, which skips
    aiokafka's per-message path; keys choose the partition with the default (murmur2)
    partitioner, the one the outbox relay's producer uses. Returns the number published, all
    acknowledged: a batch Kafka never acknowledged fails the call, naming the error.

    ``acks="all"`` waits for every in-sync replica and makes the producer idempotent, so a
    batch retried after a broker died mid-request is written once (aiokafka then retries
    until the batch is acknowledged instead of expiring it). ``pace(sent)`` is awaited every
    5,000 records: a test holds the producer back with it.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        compression_type="lz4",
        max_batch_size=1024 * 1024,
        linger_ms=20,
        acks=acks,
        enable_idempotence=acks == "all",
    )
    await producer.start()
    partition_of: dict[bytes, int] = {}
    everyone = list(range(partitions))
    batches = {partition: producer.create_batch() for partition in everyone}
    deliveries: list[asyncio.Future[object]] = []
    sent = 0
    try:
        for key, value in records:
            partition = partition_of.get(key)
            if partition is None:
                partition = partition_of[key] = DefaultPartitioner()(key, everyone, everyone)
            batch = batches[partition]
            if batch.append(key=key, value=value, timestamp=None) is None:
                deliveries.append(await producer.send_batch(batch, topic, partition=partition))
                batch = batches[partition] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
            sent += 1
            if sent % 5_000 == 0:
                await (pace(sent) if pace is not None else asyncio.sleep(0))
        for partition, batch in batches.items():
            if batch.record_count():
                deliveries.append(await producer.send_batch(batch, topic, partition=partition))
        outcomes = await asyncio.gather(*deliveries, return_exceptions=True)
    finally:
        await producer.stop()
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if failures:
        raise AssertionError(
            f"{len(failures)} of {len(deliveries)} batches not acknowledged, first: {failures[0]!r}"
        )
    return sent
