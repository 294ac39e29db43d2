"""One node and the three-node cluster are configured by the same code: what differs is the
quorum, and replication follows it."""

from __future__ import annotations

from pathlib import Path

from deploy.local_kafka import KafkaNode, KafkaPaths, cluster_nodes, server_properties
from infra.kafka_admin import topic_config
from schemas.topics import TOPIC_SPECS


def _properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if not line.startswith("#"))
    return {key: value for key, value in pairs}


def test_cluster_nodes_share_one_quorum_and_keep_three_copies(tmp_path: Path) -> None:
    nodes = cluster_nodes(first_port=19092, base=tmp_path)
    configs = [_properties(server_properties(node, nodes)) for node in nodes]

    assert [config["node.id"] for config in configs] == ["1", "2", "3"]
    assert {config["controller.quorum.bootstrap.servers"] for config in configs} == {
        "127.0.0.1:20092,127.0.0.1:20093,127.0.0.1:20094"
    }
    assert [config["listeners"] for config in configs] == [
        f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{port + 1000}"
        for port in (19092, 19093, 19094)
    ]
    assert len({config["log.dirs"] for config in configs}) == 3
    assert all(
        Path(config["log.dirs"]).is_relative_to(tmp_path / "kafka-cluster") for config in configs
    )
    for config in configs:
        assert config["default.replication.factor"] == "3"
        assert config["offsets.topic.replication.factor"] == "3"
        assert config["transaction.state.log.replication.factor"] == "3"
        assert config["min.insync.replicas"] == "2"
        assert config["transaction.state.log.min.isr"] == "2"
    assert {node.paths.libs for node in nodes} == {tmp_path / "kafka" / "libs"}


def test_single_node_is_a_quorum_of_one_with_one_copy(tmp_path: Path) -> None:
    node = KafkaNode(1, 9092, KafkaPaths(tmp_path / "kafka", tmp_path / "kafka" / "libs"))
    config = _properties(server_properties(node, [node]))

    assert config["controller.quorum.bootstrap.servers"] == "127.0.0.1:10092"
    assert config["default.replication.factor"] == "1"
    assert config["min.insync.replicas"] == "1"
    assert config["offsets.topic.replication.factor"] == "1"


def test_replicated_topics_acknowledge_once_two_replicas_hold_a_write() -> None:
    for spec in TOPIC_SPECS:
        assert topic_config(spec, 3) == {**spec.config, "min.insync.replicas": "2"}
        assert topic_config(spec, 1) == spec.config
