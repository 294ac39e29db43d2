"""Topic administration and broker reachability, shared by the API and the workers."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

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
    return created


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
