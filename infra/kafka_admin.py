"""Topic administration and broker reachability, shared by the API and the workers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.client import CoordinationType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.protocol.commit import OffsetFetchRequest

from schemas.settings import Settings
from schemas.topics import TOPIC_SPECS, TopicSpec, topic_name

log = logging.getLogger("feedgrid.kafka")


async def broker_ready(bootstrap: str, timeout: float = 3.0) -> bool:
    """True when a broker answers a metadata request within the timeout."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
        return bool(client.cluster.brokers())
    except (TimeoutError, KafkaError, OSError):
        return False
    finally:
        await client.close()


async def topic_partitions(bootstrap: str, topic: str) -> set[int]:
    """The partition numbers of ``topic`` (empty while it does not exist)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        await client.bootstrap()
        cluster = await client.fetch_all_metadata()
        return set(cluster.partitions_for_topic(topic) or ())
    finally:
        await client.close()


# With three copies or more, an acks=all write counts once two replicas hold it: one broker may
# die without losing an acknowledged event, and producing goes on while it is away.
DURABLE_REPLICATION = 3
DURABLE_MIN_INSYNC = 2


def topic_config(spec: TopicSpec, replication: int) -> dict[str, str]:
    """The spec's configuration, plus ``min.insync.replicas`` when the topic is replicated.

    Set on the topic itself rather than left to the broker default (1 unless the operator
    changed it), so durability does not depend on how a cluster happens to be configured.
    """
    if replication < DURABLE_REPLICATION:
        return dict(spec.config)
    return {**spec.config, "min.insync.replicas": str(DURABLE_MIN_INSYNC)}


async def ensure_topics(settings: Settings) -> list[str]:
    """Create every topic FeedGrid uses, with its cleanup policy. Idempotent; returns new names."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10_000
    )
    await admin.start()
    created: list[str] = []
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                name=topic_name(settings.topic_prefix, spec.suffix),
                num_partitions=settings.topic_partitions,
                replication_factor=settings.topic_replication,
                topic_configs=topic_config(spec, settings.topic_replication),
            )
            for spec in TOPIC_SPECS
            if topic_name(settings.topic_prefix, spec.suffix) not in existing
        ]
        for topic in wanted:
            try:
                await admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
    if created:
        log.info("created kafka topics", extra={"topics": created})
    await wait_until_usable(
        settings.kafka_bootstrap,
        [topic_name(settings.topic_prefix, spec.suffix) for spec in TOPIC_SPECS],
        [f"{settings.topic_prefix}{group}" for group in CONSUMER_GROUPS],
    )
    return created


# The consumer groups of the API side and the workers (without the topic prefix). A client
# that joins a group before the broker has a coordinator for it logs errors while it retries.
CONSUMER_GROUPS = ("registry-status", "worker-batch", "worker")
USABLE_WAIT_SECONDS = 30.0


async def _coordinator_answers(client: AIOKafkaClient, group: str, topic: str) -> bool:
    """Whether the group's coordinator is found and answers for the group: a broker names the
    coordinator before it has loaded the group's offsets partition, and a consumer joining
    then is told the coordinator is not available (aiokafka logs it as a dead coordinator)."""
    try:
        node = await client.coordinator_lookup(CoordinationType.GROUP, group)
        answer = await client.send(node, OffsetFetchRequest(group, [(topic, [0])]))
    except KafkaError:
        return False
    if getattr(answer, "error_code", 0):  # versions 2 and later say it once for the group
        return False
    return all(partition[-1] == 0 for _, partitions in answer.topics for partition in partitions)


async def wait_until_usable(
    bootstrap: str, topics: list[str], groups: list[str], timeout: float = USABLE_WAIT_SECONDS
) -> bool:
    """Waits until every topic has its partitions in the cluster metadata and every group a
    coordinator: a topic just created, and a new group (or a broker just started, whose
    ``__consumer_offsets`` is still loading), are not usable at once, and a consumer started
    then logs "topic not found" and "coordinator not available" errors while it retries.
    False (with an info line) when the wait ran out: the clients still retry by themselves."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    deadline = asyncio.get_running_loop().time() + timeout
    waiting_for = "the broker"
    try:
        await client.bootstrap()
        missing = list(topics)
        while missing:
            waiting_for = f"topics {missing}"
            cluster = await client.fetch_all_metadata()
            missing = [topic for topic in missing if not cluster.partitions_for_topic(topic)]
            if missing:
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError
                await asyncio.sleep(0.2)
        for group in groups:
            waiting_for = f"a coordinator of group {group}"
            while not await _coordinator_answers(client, group, topics[0]):
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError
                await asyncio.sleep(0.2)
        return True
    except (TimeoutError, KafkaError, OSError) as error:
        log.info("kafka not usable yet (waiting for %s): %r", waiting_for, error)
        return False
    finally:
        await client.close()


# Topics deleted per request: a test session's thousand topics in a few calls, each well
# within the broker's request timeout.
DELETE_CHUNK = 200


async def delete_topics_under(bootstrap: str, prefixes: Iterable[str]) -> int:
    """Deletes every topic whose name starts with one of ``prefixes``; returns how many.

    The test suite gives each test topics of its own (a prefix each) and deletes them when
    it ends, so a developer's broker does not keep every run's thousands of partitions."""
    wanted = tuple(prefix for prefix in prefixes if prefix)
    if not wanted:
        return 0
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        names = sorted(name for name in await admin.list_topics() if name.startswith(wanted))
        for begin in range(0, len(names), DELETE_CHUNK):
            await admin.delete_topics(names[begin : begin + DELETE_CHUNK])
        return len(names)
    finally:
        await admin.close()


async def describe_topic_configs(bootstrap: str, names: list[str]) -> dict[str, dict[str, str]]:
    """Read topic configuration back from the broker (used by tests and `feedgrid kafka topics`)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
        configs: dict[str, dict[str, str]] = {}
        for response in responses:
            for resource in response.resources:
                name = resource[3]
                configs[name] = {entry[0]: entry[1] for entry in resource[4]}
        return configs
    finally:
        await admin.close()
