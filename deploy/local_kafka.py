"""The local Apache Kafka broker: one KRaft node (broker + controller) on loopback.

Used by `feedgrid up`, `feedgrid kafka ...`, `python -m deploy.local_kafka ...` and the test
fixtures. Everything lives under the var dir (``./var`` or ``$FEEDGRID_VAR_DIR``)::

    <var>/kafka/libs/              broker jars, resolved by Maven from deploy/kafka/pom.xml
    <var>/kafka/data/              KRaft metadata log and topic data (formatted once)
    <var>/kafka/server.properties  generated on every start
    <var>/kafka/server.log         broker log (INFO, deploy/kafka/log4j2.xml) + JVM output
    <var>/kafka/kafka.pid          pid of the broker JVM started by this module

Plain functions: :func:`install_kafka`, :func:`start_kafka`, :func:`stop_kafka`,
:func:`kafka_status`, :func:`kafka_is_up` (async) and :func:`broker_answers` (sync).
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from deploy.launcher_common import file_lock, log_tail, var_dir

DEFAULT_PORT = 9092
CONTROLLER_PORT_OFFSET = 1000
HOST = "127.0.0.1"
HEAP_OPTS = ("-Xms256m", "-Xmx768m")
NODE_ID = 1

DEPLOY_KAFKA_DIR = Path(__file__).resolve().parent / "kafka"
POM_PATH = DEPLOY_KAFKA_DIR / "pom.xml"
LOG4J_CONFIG = DEPLOY_KAFKA_DIR / "log4j2.xml"
MARKER_NAME = ".feedgrid-kafka-version"

Echo = Callable[[str], None]


class KafkaLauncherError(RuntimeError):
    """The local broker could not be installed, started or stopped; the message says why."""


@dataclass(frozen=True)
class KafkaPaths:
    root: Path

    @property
    def libs(self) -> Path:
        return self.root / "libs"

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
    return KafkaPaths((base or var_dir()) / "kafka")


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


async def kafka_is_up(bootstrap: str, timeout: float = 5.0) -> bool:
    """True when a broker at ``bootstrap`` answers a metadata request within ``timeout`` s."""
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
                return bool(client.cluster.brokers())
        except (Exception, TimeoutError):
            return False
        finally:
            with contextlib.suppress(Exception):
                await client.close()


def broker_answers(bootstrap: str, timeout: float = 5.0) -> bool:
    """Sync :func:`kafka_is_up`. Safe inside a running event loop (probes from a thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(kafka_is_up(bootstrap, timeout))
    result: list[bool] = []
    worker = threading.Thread(
        target=lambda: result.append(asyncio.run(kafka_is_up(bootstrap, timeout))),
        name="kafka-probe",
        daemon=True,
    )
    worker.start()
    worker.join(timeout + 10)
    return bool(result and result[0])


# ---------------------------------------------------------------------------- processes

_children: dict[int, subprocess.Popen[bytes]] = {}


def _pid_alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        _children.pop(pid, None)
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie has exited already


def _is_our_broker(pid: int, paths: KafkaPaths) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"kafka.Kafka" in cmdline and str(paths.config).encode() in cmdline


def read_pid(paths: KafkaPaths | None = None) -> int | None:
    """Pid of the live broker started from this var dir, or None (stale pid files ignored)."""
    paths = paths or kafka_paths()
    try:
        pid = int(paths.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if _pid_alive(pid) and _is_our_broker(pid, paths):
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


def server_properties(port: int, data_dir: Path) -> str:
    """server.properties of one combined broker+controller node on 127.0.0.1."""
    controller_port = port + CONTROLLER_PORT_OFFSET
    settings = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.bootstrap.servers": f"{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": "4",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
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


def format_storage(paths: KafkaPaths, echo: Echo | None = None) -> bool:
    """Format the KRaft storage once (standalone controller); False when already formatted."""
    echo = echo or _default_echo
    if paths.meta_properties.exists():
        return False
    cluster_id = _random_cluster_id()
    echo(f"Formatting KRaft storage in {paths.data} (cluster id {cluster_id}) ...")
    command = _java_base(paths) + [
        "kafka.tools.StorageTool",
        "format",
        "--standalone",
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
    return True


def formatted_controller_port(paths: KafkaPaths) -> int | None:
    """The controller port the storage was formatted with (recorded next to the data)."""
    try:
        return int((paths.root / "formatted-controller-port").read_text().strip())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------- start / stop


def _wait_until_up(
    bootstrap: str,
    timeout: float,
    echo: Echo,
    process: subprocess.Popen[bytes] | None,
    pid: int | None,
    log_path: Path,
) -> None:
    started = time.monotonic()
    deadline = started + timeout
    next_report = started + 5
    while True:
        if process is not None and process.poll() is not None:
            raise KafkaLauncherError(
                f"Kafka exited during start (exit code {process.returncode}). "
                f"Last lines of {log_path}:\n{log_tail(log_path)}"
            )
        if process is None and pid is not None and not _pid_alive(pid):
            raise KafkaLauncherError(
                f"Kafka (pid {pid}) exited during start. Last lines of {log_path}:\n"
                f"{log_tail(log_path)}"
            )
        if broker_answers(bootstrap, 2.0):
            echo(f"Kafka is up on {bootstrap} ({time.monotonic() - started:.1f}s).")
            return
        now = time.monotonic()
        if now >= deadline:
            raise KafkaLauncherError(
                f"Kafka did not answer on {bootstrap} within {timeout:.0f}s. "
                f"Last lines of {log_path}:\n{log_tail(log_path)}"
            )
        if now >= next_report:
            echo(f"  waiting for Kafka on {bootstrap} ... {now - started:.0f}s")
            next_report = now + 5
        time.sleep(0.5)


def start_kafka(port: int = DEFAULT_PORT, timeout: float = 60, echo: Echo | None = None) -> bool:
    """Start the local broker on 127.0.0.1:``port`` and wait until it answers metadata requests.

    Returns True when this call started it, False when a broker already answered there.
    Raises :class:`KafkaLauncherError` (with the log's tail) when it cannot start.
    """
    echo = echo or _default_echo
    paths = kafka_paths()
    bootstrap = f"{HOST}:{port}"
    paths.root.mkdir(parents=True, exist_ok=True)
    with file_lock(paths.root / ".start.lock"):
        if broker_answers(bootstrap, 3.0):
            echo(f"Kafka already running on {bootstrap}")
            return False
        pid = read_pid(paths)
        if pid is not None:
            running_port = configured_port(paths)
            if running_port != port:
                raise KafkaLauncherError(
                    f"the broker of {paths.root} (pid {pid}) runs on port {running_port}, not "
                    f"{port}: stop it first, or use another FEEDGRID_VAR_DIR"
                )
            echo(f"Kafka (pid {pid}) is starting; waiting for it on {bootstrap} ...")
            _wait_until_up(bootstrap, timeout, echo, None, pid, paths.log)
            return False

        install_kafka(echo=echo)
        controller_port = port + CONTROLLER_PORT_OFFSET
        formatted_port = formatted_controller_port(paths)
        if paths.meta_properties.exists() and formatted_port not in (None, controller_port):
            raise KafkaLauncherError(
                f"the KRaft storage in {paths.data} was formatted for controller port "
                f"{formatted_port} (broker port {formatted_port - CONTROLLER_PORT_OFFSET}); "
                f"start with --port {formatted_port - CONTROLLER_PORT_OFFSET}, or delete "
                f"{paths.data} to start afresh"
            )
        paths.data.mkdir(parents=True, exist_ok=True)
        paths.config.write_text(server_properties(port, paths.data))
        if format_storage(paths, echo):
            (paths.root / "formatted-controller-port").write_text(f"{controller_port}\n")

        command = _java_base(paths) + [
            *HEAP_OPTS,
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "kafka.Kafka",
            str(paths.config),
        ]
        with open(paths.log, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"\n===== {stamp} starting Kafka on {bootstrap} =====\n".encode())
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
        echo(f"Started Kafka (pid {process.pid}) on {bootstrap}; log: {paths.log}")
        try:
            _wait_until_up(bootstrap, timeout, echo, process, process.pid, paths.log)
        except KafkaLauncherError:
            if process.poll() is None:
                _terminate(process.pid, 10)
            paths.pid_file.unlink(missing_ok=True)
            raise
        return True


def _terminate(pid: int, timeout: float) -> bool:
    """SIGTERM, wait up to ``timeout`` s, then SIGKILL. True when it had to SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return False
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.1)
    return True


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
    killed = _terminate(pid, timeout)
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


# ---------------------------------------------------------------------------- CLI

kafka_app = typer.Typer(
    help=(
        "The local Apache Kafka broker: one KRaft node (broker + controller) on 127.0.0.1, "
        "with jars, data, log and pid file under $FEEDGRID_VAR_DIR/kafka (default ./var/kafka)."
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

    The jars go to <var>/kafka/libs. Quick and idempotent once they are there.
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

    Exit 1 with the tail of <var>/kafka/server.log when it cannot start.
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


if __name__ == "__main__":
    kafka_app()
