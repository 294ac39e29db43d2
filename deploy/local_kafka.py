"""The local Apache Kafka brokers: KRaft nodes (broker + controller in one JVM) on loopback.

One node serves `feedgrid up`, `feedgrid kafka ...` and the test fixtures; three nodes of one
quorum (`feedgrid kafka cluster ...`) are the scale mode's cluster for the fault tests, started
from the same jars with the same node configuration. Everything lives under the var dir
(``./var`` or ``$FEEDGRID_VAR_DIR``)::

    <var>/kafka/libs/              broker jars, resolved by Maven from deploy/kafka/pom.xml
    <var>/kafka/data/              KRaft metadata log and topic data (formatted once)
    <var>/kafka/server.properties  generated on every start
    <var>/kafka/server.log         broker log (INFO, deploy/kafka/log4j2.xml) + JVM output
    <var>/kafka/kafka.pid          pid of the broker JVM started by this module
    <var>/kafka-cluster/node-N/    the same files for node N of the three-node cluster

Plain functions: :func:`install_kafka`, :func:`start_kafka`, :func:`stop_kafka`,
:func:`kafka_status`, :func:`kafka_is_up` (async) and :func:`broker_answers` (sync); for the
cluster :func:`start_cluster`, :func:`kill_cluster_node`, :func:`stop_cluster` and
:func:`cluster_status`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from deploy.launcher_common import (
    file_lock,
    log_tail,
    pid_alive,
    recorded_pid,
    runs_with,
    var_dir,
)

DEFAULT_PORT = 9092
CONTROLLER_PORT_OFFSET = 1000
HOST = "127.0.0.1"
HEAP_OPTS = ("-Xms256m", "-Xmx768m")
NODE_ID = 1
# Three nodes on 19092-19094 (controllers on 20092-20094), small heaps: 2 cores, shared machine.
CLUSTER_FIRST_PORT = 19092
CLUSTER_SIZE = 3
CLUSTER_HEAP_OPTS = ("-Xms128m", "-Xmx384m")

DEPLOY_KAFKA_DIR = Path(__file__).resolve().parent / "kafka"
POM_PATH = DEPLOY_KAFKA_DIR / "pom.xml"
LOG4J_CONFIG = DEPLOY_KAFKA_DIR / "log4j2.xml"
MARKER_NAME = ".feedgrid-kafka-version"

Echo = Callable[[str], None]


class KafkaLauncherError(RuntimeError):
    """The local broker could not be installed, started or stopped; the message says why."""


@dataclass(frozen=True)
class KafkaPaths:
    """Where one node keeps its files; ``libs`` is the one installation of the jars."""

    root: Path
    libs: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def pid_file(self) -> Path:
        return self.root / "kafka.pid"

    @property
    def config(self) -> Path:
        return self.root / "server.properties"

    @property
    def marker(self) -> Path:
        return self.libs / MARKER_NAME

    @property
    def meta_properties(self) -> Path:
        return self.data / "meta.properties"


def kafka_paths(base: Path | None = None) -> KafkaPaths:
    """Paths of the local broker under ``base`` (default: :func:`var_dir`)."""
    root = (base or var_dir()) / "kafka"
    return KafkaPaths(root, root / "libs")


@dataclass(frozen=True)
class KafkaNode:
    """One KRaft node on 127.0.0.1: broker on ``port``, controller on port + 1000."""

    node_id: int
    port: int
    paths: KafkaPaths
    heap: tuple[str, ...] = HEAP_OPTS
    name: str = "Kafka"

    @property
    def controller_port(self) -> int:
        return self.port + CONTROLLER_PORT_OFFSET

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def controller(self) -> str:
        return f"{HOST}:{self.controller_port}"


def single_node(port: int = DEFAULT_PORT) -> KafkaNode:
    """The local broker of `feedgrid up`: a quorum of one."""
    return KafkaNode(NODE_ID, port, kafka_paths())


def _default_echo(message: str) -> None:
    typer.echo(message, err=True)


def kafka_version() -> str:
    """The Kafka version pinned in deploy/kafka/pom.xml (property ``kafka.version``)."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ElementTree.parse(POM_PATH).getroot()
    node = root.find("m:properties/m:kafka.version", ns)
    if node is None or not (node.text or "").strip():
        raise KafkaLauncherError(f"no <kafka.version> property in {POM_PATH}")
    return (node.text or "").strip()


def _marker_text() -> str:
    digest = hashlib.sha256(POM_PATH.read_bytes()).hexdigest()[:16]
    return f"kafka {kafka_version()} pom {digest}\n"


def _libs_installed(paths: KafkaPaths) -> bool:
    try:
        marker_ok = paths.marker.read_text() == _marker_text()
    except OSError:
        return False
    return marker_ok and any(paths.libs.glob("kafka_2.13-*.jar"))


# ---------------------------------------------------------------------------- install


def install_kafka(force: bool = False, echo: Echo | None = None) -> bool:
    """Resolve the broker jars into <var>/kafka/libs with Maven, unless already there.

    Returns True when it ran Maven, False when the jars of the pinned version were present.
    """
    echo = echo or _default_echo
    paths = kafka_paths()
    if not force and _libs_installed(paths):
        return False
    with file_lock(paths.root / ".install.lock"):
        if not force and _libs_installed(paths):
            return False
        mvn = shutil.which("mvn")
        if mvn is None:
            raise KafkaLauncherError("Maven (mvn) is not on PATH: apt-get install -y maven")
        if shutil.which("java") is None:
            raise KafkaLauncherError(
                "java is not on PATH: apt-get install -y openjdk-17-jre-headless"
            )
        version = kafka_version()
        staging = paths.root / "libs.new"
        shutil.rmtree(staging, ignore_errors=True)
        echo(f"Resolving Apache Kafka {version} jars with Maven into {paths.libs} ...")
        command = [
            mvn,
            "-q",
            "-B",
            "-Dstyle.color=never",
            "-f",
            str(POM_PATH),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            output = (result.stdout + result.stderr).strip().splitlines()[-30:]
            raise KafkaLauncherError(
                f"mvn dependency:copy-dependencies failed (exit {result.returncode}):\n"
                + "\n".join(output)
            )
        (staging / MARKER_NAME).write_text(_marker_text())
        shutil.rmtree(paths.libs, ignore_errors=True)
        staging.rename(paths.libs)
        echo(f"Installed {len(list(paths.libs.glob('*.jar')))} jars (Kafka {version}).")
        return True


# ---------------------------------------------------------------------------- probing


class _DropBelowCritical(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.CRITICAL


_QUIET_LOGGERS = ("aiokafka", "aiokafka.conn")
_quiet_filter = _DropBelowCritical()
_quiet_lock = threading.Lock()
_quiet_depth = 0


@contextlib.contextmanager
def _quiet_aiokafka() -> Iterator[None]:
    """Silence aiokafka's 'Unable connect to ...' errors while probing a broker that is down."""
    global _quiet_depth
    with _quiet_lock:
        if _quiet_depth == 0:
            for name in _QUIET_LOGGERS:
                logging.getLogger(name).addFilter(_quiet_filter)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                for name in _QUIET_LOGGERS:
                    logging.getLogger(name).removeFilter(_quiet_filter)


async def live_brokers(bootstrap: str, timeout: float = 5.0) -> int:
    """How many brokers the metadata of ``bootstrap`` lists (0 when none answers in time)."""
    from aiokafka.client import AIOKafkaClient

    timeout_ms = max(int(timeout * 1000), 500)
    with _quiet_aiokafka():
        client = AIOKafkaClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=timeout_ms,
            retry_backoff_ms=100,
            connections_max_idle_ms=max(timeout_ms * 2, 10_000),
        )
        try:
            async with asyncio.timeout(timeout):
                await client.bootstrap()
                return len(client.cluster.brokers())
        except (Exception, TimeoutError):
            return 0
        finally:
            with contextlib.suppress(Exception):
                await client.close()


async def kafka_is_up(bootstrap: str, timeout: float = 5.0) -> bool:
    """True when a broker at ``bootstrap`` answers a metadata request within ``timeout`` s."""
    return await live_brokers(bootstrap, timeout) > 0


def brokers_seen(bootstrap: str, timeout: float = 5.0) -> int:
    """Sync :func:`live_brokers`. Safe inside a running event loop (probes from a thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(live_brokers(bootstrap, timeout))
    result: list[int] = []
    worker = threading.Thread(
        target=lambda: result.append(asyncio.run(live_brokers(bootstrap, timeout))),
        name="kafka-probe",
        daemon=True,
    )
    worker.start()
    worker.join(timeout + 10)
    return result[0] if result else 0


def broker_answers(bootstrap: str, timeout: float = 5.0) -> bool:
    """Sync :func:`kafka_is_up`. Safe inside a running event loop (probes from a thread)."""
    return brokers_seen(bootstrap, timeout) > 0


# ---------------------------------------------------------------------------- processes

_children: dict[int, subprocess.Popen[bytes]] = {}


def _pid_alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        _children.pop(pid, None)
        return False
    return pid_alive(pid)


def read_pid(paths: KafkaPaths | None = None) -> int | None:
    """Pid of the live broker started from this var dir, or None (stale pid files ignored)."""
    paths = paths or kafka_paths()
    pid = recorded_pid(paths.pid_file)
    if pid is not None and _pid_alive(pid) and runs_with(pid, "kafka.Kafka", str(paths.config)):
        return pid
    return None


def configured_port(paths: KafkaPaths | None = None) -> int | None:
    """The PLAINTEXT port written into <var>/kafka/server.properties, if any."""
    paths = paths or kafka_paths()
    try:
        lines = paths.config.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "listeners":
            for listener in value.split(","):
                if listener.strip().startswith("PLAINTEXT://"):
                    return int(listener.rsplit(":", 1)[1])
    return None


# ---------------------------------------------------------------------------- config + format


def server_properties(node: KafkaNode, quorum: Sequence[KafkaNode]) -> str:
    """server.properties of one combined broker+controller node of ``quorum`` on 127.0.0.1.

    Every node of the quorum is a voter; replication follows the quorum's size: a single node
    keeps one copy of everything, a cluster of three keeps three and acknowledges a write
    (acks=all) once two hold it, so it loses nothing when one node dies.
    """
    replication = len(quorum)
    min_insync = max(1, replication - 1)
    listeners = f"PLAINTEXT://{node.bootstrap},CONTROLLER://{node.controller}"
    settings = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.bootstrap.servers": ",".join(voter.controller for voter in quorum),
        "listeners": listeners,
        "advertised.listeners": listeners,
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(node.paths.data),
        "num.partitions": "4",
        "default.replication.factor": str(replication),
        "min.insync.replicas": str(min_insync),
        "offsets.topic.replication.factor": str(replication),
        "transaction.state.log.replication.factor": str(replication),
        "transaction.state.log.min.isr": str(min_insync),
        "share.coordinator.state.topic.replication.factor": str(replication),
        "share.coordinator.state.topic.min.isr": str(min_insync),
        "group.initial.rebalance.delay.ms": "0",
        # the application creates its topics itself (schemas/topics.py)
        "auto.create.topics.enable": "false",
        "delete.topic.enable": "true",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "log.retention.hours": "168",
        "log.segment.bytes": str(256 * 1024 * 1024),
    }
    lines = ["# generated by deploy/local_kafka.py on every start: edits are overwritten"]
    lines += [f"{key}={value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def _java_base(paths: KafkaPaths) -> list[str]:
    java = shutil.which("java")
    if java is None:
        raise KafkaLauncherError("java is not on PATH: apt-get install -y openjdk-17-jre-headless")
    return [
        java,
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={paths.root}",
        "-Djava.awt.headless=true",
        "-cp",
        f"{paths.libs}/*",
    ]


def _random_cluster_id() -> str:
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):  # Kafka's Uuid.randomUuid() avoids these too
            return text


def format_storage(
    node: KafkaNode,
    *,
    cluster_id: str | None = None,
    initial_controllers: str | None = None,
    echo: Echo | None = None,
) -> bool:
    """Format the node's KRaft storage once; False when it was formatted already.

    Without ``initial_controllers`` the node is a quorum of its own (``--standalone``); with
    it, a voter of the quorum it lists (``id@host:port:directory-id,...``), every node of which
    is formatted with the same list and the same ``cluster_id``.
    """
    echo = echo or _default_echo
    paths = node.paths
    if paths.meta_properties.exists():
        return False
    cluster_id = cluster_id or _random_cluster_id()
    echo(f"Formatting KRaft storage in {paths.data} (cluster id {cluster_id}) ...")
    quorum = (
        ["--standalone"]
        if initial_controllers is None
        else ["--initial-controllers", initial_controllers]
    )
    command = _java_base(paths) + [
        "kafka.tools.StorageTool",
        "format",
        *quorum,
        "-t",
        cluster_id,
        "-c",
        str(paths.config),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=paths.root)
    if result.returncode != 0 or not paths.meta_properties.exists():
        output = (result.stdout + result.stderr).strip().splitlines()[-30:]
        raise KafkaLauncherError(
            f"kafka-storage format failed (exit {result.returncode}):\n" + "\n".join(output)
        )
    (paths.root / "formatted-controller-port").write_text(f"{node.controller_port}\n")
    return True


def formatted_controller_port(paths: KafkaPaths) -> int | None:
    """The controller port the storage was formatted with (recorded next to the data)."""
    try:
        return int((paths.root / "formatted-controller-port").read_text().strip())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------- start / stop


@dataclass(frozen=True)
class _Starting:
    """A node a start waits for: the JVM it launched, or the pid of one already starting."""

    node: KafkaNode
    pid: int
    process: subprocess.Popen[bytes] | None = None

    def raise_if_exited(self) -> None:
        log_path = self.node.paths.log
        if self.process is not None and self.process.poll() is not None:
            raise KafkaLauncherError(
                f"{self.node.name} exited during start (exit code {self.process.returncode}). "
                f"Last lines of {log_path}:\n{log_tail(log_path)}"
            )
        if self.process is None and not _pid_alive(self.pid):
            raise KafkaLauncherError(
                f"{self.node.name} (pid {self.pid}) exited during start. "
                f"Last lines of {log_path}:\n{log_tail(log_path)}"
            )


def _wait_until_up(starting: Sequence[_Starting], brokers: int, timeout: float, echo: Echo) -> None:
    """Until each node answers on its own port with metadata listing ``brokers`` brokers."""
    began = time.monotonic()
    deadline = began + timeout
    next_report = began + 5
    pending = list(starting)
    while True:
        for waiting in pending:
            waiting.raise_if_exited()
        pending = [
            waiting for waiting in pending if brokers_seen(waiting.node.bootstrap, 2.0) < brokers
        ]
        if not pending:
            addresses = ",".join(waiting.node.bootstrap for waiting in starting)
            echo(f"Kafka is up on {addresses} ({time.monotonic() - began:.1f}s).")
            return
        now = time.monotonic()
        first = pending[0].node
        if now >= deadline:
            raise KafkaLauncherError(
                f"{first.name} did not answer on {first.bootstrap} with {brokers} broker(s) "
                f"within {timeout:.0f}s. Last lines of {first.paths.log}:\n"
                f"{log_tail(first.paths.log)}"
            )
        if now >= next_report:
            echo(f"  waiting for {first.name} on {first.bootstrap} ... {now - began:.0f}s")
            next_report = now + 5
        time.sleep(0.5)


def _launch(node: KafkaNode, echo: Echo) -> _Starting:
    """Start the node's JVM in the background (configured and formatted already)."""
    paths = node.paths
    command = _java_base(paths) + [
        *node.heap,
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "kafka.Kafka",
        str(paths.config),
    ]
    with open(paths.log, "ab") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"\n===== {stamp} starting {node.name} on {node.bootstrap} =====\n".encode())
        log.flush()
        process = subprocess.Popen(
            command,
            cwd=paths.root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _children[process.pid] = process
    paths.pid_file.write_text(f"{process.pid}\n")
    echo(f"Started {node.name} (pid {process.pid}) on {node.bootstrap}; log: {paths.log}")
    return _Starting(node, process.pid, process)


def _check_formatted_port(node: KafkaNode) -> None:
    """A node's storage knows its quorum's controller ports: refuse to start it elsewhere."""
    formatted_port = formatted_controller_port(node.paths)
    if node.paths.meta_properties.exists() and formatted_port not in (None, node.controller_port):
        raise KafkaLauncherError(
            f"the KRaft storage in {node.paths.data} was formatted for controller port "
            f"{formatted_port} (broker port {formatted_port - CONTROLLER_PORT_OFFSET}); "
            f"start with --port {formatted_port - CONTROLLER_PORT_OFFSET}, or delete "
            f"{node.paths.data} to start afresh"
        )


def start_kafka(port: int = DEFAULT_PORT, timeout: float = 60, echo: Echo | None = None) -> bool:
    """Start the local broker on 127.0.0.1:``port`` and wait until it answers metadata requests.

    Returns True when this call started it, False when a broker already answered there.
    Raises :class:`KafkaLauncherError` (with the log's tail) when it cannot start.
    """
    echo = echo or _default_echo
    node = single_node(port)
    paths = node.paths
    paths.root.mkdir(parents=True, exist_ok=True)
    with file_lock(paths.root / ".start.lock"):
        if broker_answers(node.bootstrap, 3.0):
            echo(f"Kafka already running on {node.bootstrap}")
            return False
        pid = read_pid(paths)
        if pid is not None:
            running_port = configured_port(paths)
            if running_port != port:
                raise KafkaLauncherError(
                    f"the broker of {paths.root} (pid {pid}) runs on port {running_port}, not "
                    f"{port}: stop it first, or use another FEEDGRID_VAR_DIR"
                )
            echo(f"Kafka (pid {pid}) is starting; waiting for it on {node.bootstrap} ...")
            _wait_until_up([_Starting(node, pid)], 1, timeout, echo)
            return False

        install_kafka(echo=echo)
        _check_formatted_port(node)
        paths.data.mkdir(parents=True, exist_ok=True)
        paths.config.write_text(server_properties(node, [node]))
        format_storage(node, echo=echo)
        starting = _launch(node, echo)
        try:
            _wait_until_up([starting], 1, timeout, echo)
        except KafkaLauncherError:
            _terminate_all([starting.pid], 10)
            paths.pid_file.unlink(missing_ok=True)
            raise
        return True


def _terminate_all(pids: Iterable[int], timeout: float) -> set[int]:
    """SIGTERM to each, up to ``timeout`` s for all to exit, then SIGKILL to the rest.

    Returns the pids that had to be killed. The signals go out together: the nodes of a
    cluster shut down side by side, not one after the other's quorum is gone.
    """
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    remaining = [pid for pid in pids if _pid_alive(pid)]
    while remaining and time.monotonic() < deadline:
        time.sleep(0.2)
        remaining = [pid for pid in remaining if _pid_alive(pid)]
    for pid in remaining:
        _kill(pid)
    return set(remaining)


def _kill(pid: int) -> None:
    """SIGKILL and wait (up to 10 s) until the process is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.1)
    _children.pop(pid, None)


def stop_kafka(timeout: float = 30, echo: Echo | None = None) -> bool:
    """Stop the broker started from this var dir. True when one was stopped, False if none ran."""
    echo = echo or _default_echo
    paths = kafka_paths()
    pid = read_pid(paths)
    if pid is None:
        paths.pid_file.unlink(missing_ok=True)
        echo(f"Kafka is not running (no live broker pid in {paths.pid_file}).")
        return False
    echo(f"Stopping Kafka (pid {pid}) ...")
    started = time.monotonic()
    killed = bool(_terminate_all([pid], timeout))
    _children.pop(pid, None)
    paths.pid_file.unlink(missing_ok=True)
    how = "killed with SIGKILL after SIGTERM timed out" if killed else "stopped"
    echo(f"Kafka {how} ({time.monotonic() - started:.1f}s).")
    return True


@dataclass(frozen=True)
class KafkaStatus:
    running: bool
    pid: int | None
    port: int
    answers: bool


def kafka_status(port: int | None = None) -> KafkaStatus:
    """Whether the broker answers on its port (default: the configured one, else 9092)."""
    paths = kafka_paths()
    port = port or configured_port(paths) or DEFAULT_PORT
    pid = read_pid(paths)
    answers = broker_answers(f"{HOST}:{port}", 3.0)
    return KafkaStatus(running=answers, pid=pid, port=port, answers=answers)


# ---------------------------------------------------------------------------- cluster


def cluster_root(base: Path | None = None) -> Path:
    """Where the three-node cluster keeps its nodes: <var>/kafka-cluster."""
    return (base or var_dir()) / "kafka-cluster"


def formatted_first_port(base: Path | None = None) -> int | None:
    """The broker port of node 1 the cluster's storage was formatted for, if formatted."""
    try:
        return int((cluster_root(base) / "formatted-first-port").read_text().strip())
    except (OSError, ValueError):
        return None


def cluster_nodes(first_port: int | None = None, base: Path | None = None) -> list[KafkaNode]:
    """The cluster's nodes 1..3 on consecutive ports from ``first_port`` (default: the ports
    the storage was formatted for, else 19092). They share the single node's jars."""
    first_port = first_port or formatted_first_port(base) or CLUSTER_FIRST_PORT
    root = cluster_root(base)
    libs = kafka_paths(base).libs
    return [
        KafkaNode(
            node_id=number,
            port=first_port + number - 1,
            paths=KafkaPaths(root / f"node-{number}", libs),
            heap=CLUSTER_HEAP_OPTS,
            name=f"Kafka node {number}",
        )
        for number in range(1, CLUSTER_SIZE + 1)
    ]


def cluster_bootstrap(nodes: Sequence[KafkaNode]) -> str:
    """Every node's broker address, as clients list them (FEEDGRID_KAFKA_BOOTSTRAP)."""
    return ",".join(node.bootstrap for node in nodes)


def _format_cluster(nodes: Sequence[KafkaNode], echo: Echo) -> None:
    """Format every node once with one cluster id and one list of initial voters."""
    formatted = [node for node in nodes if node.paths.meta_properties.exists()]
    if len(formatted) == len(nodes):
        return
    if formatted:
        raise KafkaLauncherError(
            f"only nodes {[node.node_id for node in formatted]} of the cluster in "
            f"{formatted[0].paths.root.parent} are formatted: delete that directory to start "
            "afresh"
        )
    cluster_id = _random_cluster_id()
    voters = ",".join(f"{node.node_id}@{node.controller}:{_random_cluster_id()}" for node in nodes)
    for node in nodes:
        format_storage(node, cluster_id=cluster_id, initial_controllers=voters, echo=echo)
    (nodes[0].paths.root.parent / "formatted-first-port").write_text(f"{nodes[0].port}\n")


def start_cluster(
    first_port: int | None = None, timeout: float = 120, echo: Echo | None = None
) -> list[int]:
    """Start every node of the three-node cluster that is not running, and wait until each
    answers with all three brokers in its metadata. Also how a killed node rejoins.

    Returns the ids of the nodes this call started (empty when all were running).
    """
    echo = echo or _default_echo
    root = cluster_root()
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / ".start.lock"):
        recorded = formatted_first_port()
        if first_port is not None and recorded not in (None, first_port):
            raise KafkaLauncherError(
                f"the cluster in {root} was formatted for ports {recorded}-"
                f"{recorded + CLUSTER_SIZE - 1}: start with --first-port {recorded}, or delete "
                f"{root} to start afresh"
            )
        nodes = cluster_nodes(first_port)
        install_kafka(echo=echo)
        for node in nodes:
            node.paths.data.mkdir(parents=True, exist_ok=True)
            node.paths.config.write_text(server_properties(node, nodes))
        _format_cluster(nodes, echo)
        starting: list[_Starting] = []
        launched: list[_Starting] = []
        for node in nodes:
            pid = read_pid(node.paths)
            if pid is None:
                launched.append(_launch(node, echo))
                starting.append(launched[-1])
            else:
                starting.append(_Starting(node, pid))
        try:
            _wait_until_up(starting, len(nodes), timeout, echo)
        except KafkaLauncherError:
            _terminate_all([waiting.pid for waiting in launched], 10)
            for waiting in launched:
                waiting.node.paths.pid_file.unlink(missing_ok=True)
            raise
        return [waiting.node.node_id for waiting in launched]


def kill_cluster_node(node_id: int, echo: Echo | None = None) -> int:
    """SIGKILL one node of the cluster (no shutdown at all, as a crash); returns its pid."""
    echo = echo or _default_echo
    node = _cluster_node(node_id)
    pid = read_pid(node.paths)
    if pid is None:
        raise KafkaLauncherError(f"{node.name} is not running (no live pid in its pid file)")
    _kill(pid)
    node.paths.pid_file.unlink(missing_ok=True)
    echo(f"Killed {node.name} (pid {pid}) with SIGKILL.")
    return pid


def _cluster_node(node_id: int) -> KafkaNode:
    nodes = cluster_nodes()
    if not 1 <= node_id <= len(nodes):
        raise KafkaLauncherError(f"the cluster has nodes 1..{len(nodes)}, not {node_id}")
    return nodes[node_id - 1]


def stop_cluster(timeout: float = 30, echo: Echo | None = None) -> list[int]:
    """Stop every running node (SIGTERM together, SIGKILL after ``timeout``); their ids."""
    echo = echo or _default_echo
    running = {node.node_id: (node, read_pid(node.paths)) for node in cluster_nodes()}
    pids = {node_id: pid for node_id, (_, pid) in running.items() if pid is not None}
    if not pids:
        echo("The Kafka cluster is not running.")
    killed = _terminate_all(pids.values(), timeout)
    for node, _ in running.values():
        node.paths.pid_file.unlink(missing_ok=True)
    for node_id, pid in pids.items():
        how = "killed with SIGKILL after SIGTERM timed out" if pid in killed else "stopped"
        echo(f"{running[node_id][0].name} (pid {pid}) {how}.")
    return sorted(pids)


@dataclass(frozen=True)
class NodeStatus:
    node_id: int
    bootstrap: str
    pid: int | None
    brokers_seen: int


def cluster_status() -> list[NodeStatus]:
    """Each node's pid (if running from this var dir) and how many brokers it sees."""
    return [
        NodeStatus(
            node.node_id, node.bootstrap, read_pid(node.paths), brokers_seen(node.bootstrap, 3.0)
        )
        for node in cluster_nodes()
    ]


# ---------------------------------------------------------------------------- CLI

kafka_app = typer.Typer(
    help=(
        "The local Apache Kafka broker: one KRaft node (broker + controller) on 127.0.0.1, "
        "with jars, data, log and pid file under $FEEDGRID_VAR_DIR/kafka (default ./var/kafka); "
        "`cluster` runs three such nodes as one cluster."
    ),
    no_args_is_help=True,
    add_completion=False,
)


def _fail(error: Exception) -> typer.Exit:
    typer.secho(str(error), fg=typer.colors.RED, err=True)
    return typer.Exit(1)


@kafka_app.command()
def install(
    force: Annotated[bool, typer.Option("--force", help="Resolve the jars again")] = False,
) -> None:
    """Download the Kafka broker jars (version pinned in deploy/kafka/pom.xml) with Maven.

    The jars go to $FEEDGRID_VAR_DIR/kafka/libs. Quick and idempotent once they are there.
    """
    try:
        ran = install_kafka(force=force, echo=typer.echo)
    except KafkaLauncherError as error:
        raise _fail(error) from None
    if not ran:
        typer.echo(f"Kafka {kafka_version()} jars already in {kafka_paths().libs}")


@kafka_app.command()
def start(
    port: Annotated[int, typer.Option(help="PLAINTEXT port (the controller uses port+1000)")] = (
        DEFAULT_PORT
    ),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the broker")] = 60,
) -> None:
    """Start the broker in the background and wait until it answers (installs jars if needed).

    Formats the KRaft storage on first start only.

    Exit 0 when the broker runs (already running is fine).

    Exit 1 with the tail of $FEEDGRID_VAR_DIR/kafka/server.log when it cannot start.
    """
    try:
        start_kafka(port=port, timeout=timeout, echo=typer.echo)
    except KafkaLauncherError as error:
        raise _fail(error) from None


@kafka_app.command()
def stop(
    timeout: Annotated[float, typer.Option(help="Seconds to wait after SIGTERM before SIGKILL")] = (
        30
    ),
) -> None:
    """Stop the broker started from this var dir (SIGTERM, then SIGKILL). Not running is fine."""
    stop_kafka(timeout=timeout, echo=typer.echo)


@kafka_app.command()
def status(
    port: Annotated[
        int | None, typer.Option(help="Port to probe (default: the configured one, else 9092)")
    ] = None,
) -> None:
    """Print whether the broker answers on 127.0.0.1. Exit code 0 when running, 1 when not."""
    state = kafka_status(port)
    if state.running:
        managed = f"pid {state.pid}" if state.pid is not None else "not started from this var dir"
        typer.echo(f"Kafka running on {HOST}:{state.port} ({managed})")
        return
    if state.pid is not None:
        typer.echo(
            f"Kafka not answering on {HOST}:{state.port} (pid {state.pid} alive: starting or hung)"
        )
    else:
        typer.echo(f"Kafka not running on {HOST}:{state.port}")
    raise typer.Exit(1)


cluster_app = typer.Typer(
    help=(
        "A three-node KRaft cluster on 127.0.0.1 (ports 19092-19094, controllers 20092-20094; "
        "replication 3, min.insync.replicas 2) from the same jars, under "
        "$FEEDGRID_VAR_DIR/kafka-cluster. For fault tests of the scale mode."
    ),
    no_args_is_help=True,
    add_completion=False,
)
kafka_app.add_typer(cluster_app, name="cluster")


@cluster_app.command("start")
def cluster_start(
    first_port: Annotated[
        int | None,
        typer.Option(help="Node 1's port; nodes 2 and 3 take the next two (default 19092)"),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the nodes")] = 120,
) -> None:
    """Start the nodes that are not running (a killed node rejoins) and wait for all three.

    Formats the three nodes' storage (one cluster id, one quorum) on first start only.
    """
    try:
        start_cluster(first_port=first_port, timeout=timeout, echo=typer.echo)
    except KafkaLauncherError as error:
        raise _fail(error) from None
    typer.echo(f"bootstrap: {cluster_bootstrap(cluster_nodes())}")


@cluster_app.command("kill")
def cluster_kill(node: Annotated[int, typer.Argument(help="Node id, 1..3")]) -> None:
    """SIGKILL one node, as a crash (`cluster start` brings it back)."""
    try:
        kill_cluster_node(node, echo=typer.echo)
    except KafkaLauncherError as error:
        raise _fail(error) from None


@cluster_app.command("stop")
def cluster_stop(
    timeout: Annotated[float, typer.Option(help="Seconds to wait after SIGTERM before SIGKILL")] = (
        30
    ),
) -> None:
    """Stop every node of the cluster. Not running is fine; the storage stays."""
    stop_cluster(timeout=timeout, echo=typer.echo)


@cluster_app.command("status")
def cluster_status_command() -> None:
    """Print each node's state. Exit 0 when all three answer and see each other, else 1."""
    states = cluster_status()
    for state in states:
        pid = f"pid {state.pid}" if state.pid is not None else "no pid from this var dir"
        typer.echo(
            f"node {state.node_id} on {state.bootstrap}: {pid}, sees {state.brokers_seen} broker(s)"
        )
    if any(state.brokers_seen < CLUSTER_SIZE for state in states):
        raise typer.Exit(1)


if __name__ == "__main__":
    kafka_app()
