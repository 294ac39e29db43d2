"""The local Kafka launcher against real brokers.

The shared broker on 127.0.0.1:9092 (FEEDGRID_TEST_KAFKA) is started when missing and never
stopped here. Stop/start, format-once and a failed start are exercised on a second broker with
its own var dir (tmp_path) and its own port.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from deploy.local_kafka import (
    KafkaLauncherError,
    _pid_alive,
    broker_answers,
    kafka_is_up,
    kafka_paths,
    read_pid,
    start_kafka,
    stop_kafka,
)
from infra.kafka_admin import delete_topics_under
from tests.topic_prefixes import new_topic_prefix

pytestmark = pytest.mark.kafka

SHARED_BOOTSTRAP = os.environ.get("FEEDGRID_TEST_KAFKA", "127.0.0.1:9092")
SHARED_PORT = int(SHARED_BOOTSTRAP.rsplit(":", 1)[1])


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.local_kafka", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_pair(start: int = 19092) -> int:
    """A port whose controller companion (port + 1000) is free too."""
    for port in range(start, start + 200):
        if _port_free(port) and _port_free(port + 1000):
            return port
    raise RuntimeError("no free port pair for the second broker")


def _cluster_id(meta_properties: Path) -> str:
    for line in meta_properties.read_text().splitlines():
        if line.startswith("cluster.id="):
            return line.split("=", 1)[1]
    raise AssertionError(f"no cluster.id in {meta_properties}")


@pytest.fixture(scope="module")
def shared_broker(kafka_bootstrap: str) -> str:
    """The tests' broker (started, and stopped at the end, by the session if none answered)."""
    assert kafka_bootstrap == SHARED_BOOTSTRAP
    return SHARED_BOOTSTRAP


def test_start_is_idempotent_on_the_shared_broker(shared_broker: str) -> None:
    pid_before = read_pid()

    assert start_kafka(port=SHARED_PORT) is False

    assert broker_answers(shared_broker, 5.0)
    if pid_before is not None:  # started from this var dir: the very same JVM keeps running
        assert read_pid() == pid_before
        assert _pid_alive(pid_before)


def test_cli_start_and_status_on_the_running_broker(shared_broker: str) -> None:
    pid_before = read_pid()

    started = _cli("start", "--port", str(SHARED_PORT))
    status = _cli("status", "--port", str(SHARED_PORT))

    assert started.returncode == 0, started.stderr
    assert f"Kafka already running on 127.0.0.1:{SHARED_PORT}" in started.stdout
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"Kafka running on 127.0.0.1:{SHARED_PORT}" in status.stdout
    assert read_pid() == pid_before


async def test_produce_consume_roundtrip(shared_broker: str) -> None:
    assert await kafka_is_up(shared_broker, 5.0)
    topic = f"{new_topic_prefix()}local-kafka"
    admin = AIOKafkaAdminClient(bootstrap_servers=shared_broker)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
        sent = [(f"feed-{i % 2}".encode(), f"event-{i}".encode()) for i in range(6)]
        producer = AIOKafkaProducer(bootstrap_servers=shared_broker, acks="all")
        await producer.start()
        try:
            for key, value in sent:
                await producer.send_and_wait(topic, value=value, key=key)
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=shared_broker,
            group_id=f"test-local-kafka-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        received: list[tuple[bytes | None, bytes | None]] = []
        try:
            for _ in range(40):
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    received.extend((record.key, record.value) for record in records)
                if len(received) >= len(sent):
                    break
        finally:
            await consumer.stop()

        assert sorted(received) == sorted(sent)
        for key in (b"feed-0", b"feed-1"):  # per-key order survives the trip
            assert [v for k, v in received if k == key] == [v for k, v in sent if k == key]
    finally:
        await admin.delete_topics([topic])
        await admin.close()


def test_second_broker_lifecycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Failed start, start, idempotent start, status, stop, and a restart that keeps the storage."""
    monkeypatch.setenv("FEEDGRID_VAR_DIR", str(tmp_path))
    env = dict(os.environ, FEEDGRID_VAR_DIR=str(tmp_path))
    port = _free_port_pair()
    bootstrap = f"127.0.0.1:{port}"
    paths = kafka_paths()
    assert paths.root == tmp_path / "kafka"
    try:
        # 1. controller port taken: the JVM dies, start reports the log's tail, no pid file left
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", port + 1000))
            squatter.listen()
            with pytest.raises(KafkaLauncherError, match="exited during start") as failure:
                start_kafka(port=port, timeout=60)
        assert "Address already in use" in str(failure.value)
        assert not paths.pid_file.exists()
        assert paths.meta_properties.exists()  # formatted on that first attempt
        cluster_id = _cluster_id(paths.meta_properties)
        assert any(paths.libs.glob("kafka_2.13-*.jar"))

        # 2. a real start, then an idempotent one
        assert start_kafka(port=port, timeout=60) is True
        pid = read_pid()
        assert pid is not None and _pid_alive(pid)
        assert broker_answers(bootstrap, 5.0)
        assert start_kafka(port=port, timeout=60) is False
        assert read_pid() == pid
        assert _cluster_id(paths.meta_properties) == cluster_id

        status = _cli("status", env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"pid {pid}" in status.stdout and str(port) in status.stdout

        # 3. stop: the JVM is gone, the port is dark, status says so with exit 1
        assert stop_kafka() is True
        assert not _pid_alive(pid)
        assert not paths.pid_file.exists()
        assert not broker_answers(bootstrap, 2.0)
        status = _cli("status", env=env)
        assert status.returncode == 1
        assert "not running" in status.stdout
        again = _cli("stop", env=env)
        assert again.returncode == 0
        assert "not running" in again.stdout

        # 4. restart through the CLI: same storage (no second format), new JVM
        restarted = _cli("start", "--port", str(port), env=env)
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert "Formatting" not in restarted.stdout
        new_pid = read_pid()
        assert new_pid is not None and new_pid != pid
        assert _cluster_id(paths.meta_properties) == cluster_id
        assert broker_answers(bootstrap, 5.0)
        stopped = _cli("stop", env=env)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not _pid_alive(new_pid)
    finally:
        stop_kafka()


async def _create_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, num_partitions=1, replication_factor=1) for name in names]
        )
        # A broker started moments ago may list a topic a little after creating it.
        deadline = time.monotonic() + 15
        while not set(names) <= set(await admin.list_topics()) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def _topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def test_the_topics_under_a_prefix_are_deleted_and_no_other(shared_broker: str) -> None:
    """What the suite does with its tests' topics when it ends (conftest)."""
    gone, kept = new_topic_prefix(), new_topic_prefix()
    await _create_topics(shared_broker, [f"{gone}a", f"{gone}b", f"{kept}a"])
    assert await delete_topics_under(shared_broker, [gone, ""]) == 2
    left = {name for name in await _topics(shared_broker) if name.startswith((gone, kept))}
    assert left == {f"{kept}a"}
    assert await delete_topics_under(shared_broker, []) == 0


def test_a_benchmark_deletes_its_servers_topics_when_it_ends(
    shared_broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each server a benchmark starts gets a topic prefix of its own (bench.common); the
    benchmark's exit deletes their topics and no other."""
    from bench import common

    monkeypatch.setattr(common, "KAFKA", shared_broker)
    monkeypatch.setattr(common, "_TOPIC_PREFIXES", [])
    at_exit: list[object] = []
    monkeypatch.setattr(common.atexit, "register", at_exit.append)
    first, second, other = common.topic_prefix(), common.topic_prefix(), new_topic_prefix()
    assert first != second
    assert at_exit == [common._delete_topics]  # noqa: SLF001 (once, for every prefix)
    names = [f"{first}feed-metadata", f"{second}access-events", f"{other}access-events"]
    asyncio.run(_create_topics(shared_broker, names))
    common._delete_topics()  # noqa: SLF001 (what the exit runs)
    left = {name for name in asyncio.run(_topics(shared_broker)) if name in names}
    assert left == {f"{other}access-events"}
