"""A local MQTT broker for sensor grants: Mosquitto 2 with its dynamic-security plugin.

Used by `feedgrid mqtt ...` and the test fixtures::

    <var>/mqtt/mosquitto.conf          a loopback listener, no anonymous clients, the plugin
    <var>/mqtt/dynamic-security.json   the plugin's state (clients, roles), made by
                                       `mosquitto_ctrl dynsec init` with FeedGrid's admin
    <var>/mqtt/admin-password          FeedGrid's admin password (0600); no department sees it
    <var>/mqtt/mosquitto.log           the broker's log

FeedGrid reaches it with FEEDGRID_MQTT_ADMIN_URL=mqtt://127.0.0.1:<port>,
FEEDGRID_MQTT_ADMIN_USERNAME=feedgrid-admin and FEEDGRID_MQTT_ADMIN_PASSWORD=<that file>.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from deploy.launcher_common import file_lock, log_tail, recorded_pid, runs_with, var_dir

DEFAULT_PORT = 1883
HOST = "127.0.0.1"
ADMIN = "feedgrid-admin"
PLUGIN_GLOB = "/usr/lib/*/mosquitto_dynamic_security.so"

CONFIG = """# Written by FeedGrid (deploy/local_mosquitto.py)
per_listener_settings false
listener {port} {host}
allow_anonymous false
persistence false
user {user}
log_dest file {root}/mosquitto.log
log_type error
log_type warning
log_type notice
log_type information
plugin {plugin}
plugin_opt_config_file {root}/dynamic-security.json
"""


class MosquittoLauncherError(RuntimeError):
    """The local broker could not be set up, started or stopped; the message says why."""


@dataclass(frozen=True)
class Broker:
    root: Path
    port: int

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    @property
    def admin_password(self) -> str:
        return (self.root / "admin-password").read_text().strip()

    @property
    def log(self) -> Path:
        return self.root / "mosquitto.log"

    @property
    def pid_file(self) -> Path:
        return self.root / "mosquitto.pid"

    def environment(self) -> dict[str, str]:
        """The settings that point FeedGrid at this broker as its administrator."""
        return {
            "FEEDGRID_MQTT_ADMIN_URL": self.url,
            "FEEDGRID_MQTT_ADMIN_USERNAME": ADMIN,
            "FEEDGRID_MQTT_ADMIN_PASSWORD": self.admin_password,
        }


def dynamic_security_plugin() -> str:
    found = sorted(glob.glob(PLUGIN_GLOB))
    if not found or shutil.which("mosquitto") is None or shutil.which("mosquitto_ctrl") is None:
        raise MosquittoLauncherError(
            "Mosquitto 2 with its dynamic-security plugin is needed: apt-get install mosquitto"
        )
    return found[0]


def prepare(root: Path, port: int) -> Broker:
    """Writes the configuration, and the plugin's state with FeedGrid's admin once."""
    plugin = dynamic_security_plugin()
    root.mkdir(parents=True, exist_ok=True)
    state = root / "dynamic-security.json"
    password_file = root / "admin-password"
    if not state.exists():
        password = secrets.token_urlsafe(24)
        made = subprocess.run(
            ["mosquitto_ctrl", "dynsec", "init", str(state), ADMIN, password],
            capture_output=True,
            text=True,
            check=False,
        )
        if made.returncode != 0:
            raise MosquittoLauncherError(f"mosquitto_ctrl dynsec init failed: {made.stderr}")
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
        state.chmod(0o600)
    user = pwd.getpwuid(os.getuid()).pw_name
    (root / "mosquitto.conf").write_text(
        CONFIG.format(port=port, host=HOST, user=user, root=root, plugin=plugin)
    )
    return Broker(root, port)


def answers(port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=timeout):
        return True
    return False


def launch(broker: Broker, *, detached: bool) -> subprocess.Popen[bytes]:
    """Starts mosquitto on the broker's config; returns once it listens."""
    process = subprocess.Popen(
        ["mosquitto", "-c", str(broker.root / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=detached,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise MosquittoLauncherError(
                f"mosquitto exited with {process.returncode}:\n{log_tail(broker.log)}"
            )
        if answers(broker.port):
            return process
        time.sleep(0.05)
    process.kill()
    raise MosquittoLauncherError(f"mosquitto does not listen on {broker.port}")


def local_broker(port: int = DEFAULT_PORT, base: Path | None = None) -> Broker:
    return Broker((base or var_dir()) / "mqtt", port)


def start_mosquitto(port: int = DEFAULT_PORT, base: Path | None = None) -> Broker:
    broker = local_broker(port, base)
    with file_lock(broker.root.parent / "mqtt.lock"):
        if answers(port):
            if _running_pid(broker) is None or not (broker.root / "admin-password").exists():
                # Another broker (another clone's, a system one): FeedGrid would not know its
                # administrator's password, and must not touch it.
                raise MosquittoLauncherError(
                    f"something else listens on {HOST}:{port}, not the broker of "
                    f"{broker.root}: stop it, or point FEEDGRID_MQTT_ADMIN_URL (and its user "
                    "and password) at it"
                )
            return broker
        broker = prepare(broker.root, port)
        process = launch(broker, detached=True)
        broker.pid_file.write_text(f"{process.pid}\n")
    return broker


def _running_pid(broker: Broker) -> int | None:
    """The pid of this var dir's mosquitto, if it runs (a stale pid file names no process, or
    another one by now)."""
    pid = recorded_pid(broker.pid_file)
    if pid is None or not runs_with(pid, "mosquitto", str(broker.root / "mosquitto.conf")):
        return None
    return pid


def stop_mosquitto(port: int = DEFAULT_PORT, base: Path | None = None) -> bool:
    broker = local_broker(port, base)
    pid = _running_pid(broker)
    if pid is None:  # not running, or the pid file is stale (the pid may be another's now)
        broker.pid_file.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and answers(port):
        time.sleep(0.1)
    broker.pid_file.unlink(missing_ok=True)
    return True


mqtt_app = typer.Typer(no_args_is_help=True, help=__doc__)
Port = Annotated[int, typer.Option(help="Loopback port of the broker")]


@mqtt_app.command()
def start(port: Port = DEFAULT_PORT) -> None:
    """Start the local broker (set up on first use) and print FeedGrid's settings for it."""
    try:
        broker = start_mosquitto(port)
    except MosquittoLauncherError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"mosquitto listening on {broker.url} (log {broker.log})", err=True)
    typer.echo(f"export FEEDGRID_MQTT_ADMIN_URL={broker.url}")
    typer.echo(f"export FEEDGRID_MQTT_ADMIN_USERNAME={ADMIN}")
    typer.echo(f'export FEEDGRID_MQTT_ADMIN_PASSWORD="$(cat {broker.root / "admin-password"})"')


@mqtt_app.command()
def stop(port: Port = DEFAULT_PORT) -> None:
    """Stop the local broker started by `feedgrid mqtt start`."""
    typer.echo("stopped" if stop_mosquitto(port) else "no local broker was running", err=True)


@mqtt_app.command()
def status(port: Port = DEFAULT_PORT) -> None:
    """Exit 0 when the local broker answers, 1 otherwise."""
    if answers(port):
        typer.echo(f"mosquitto answers on {HOST}:{port}")
        return
    typer.echo(f"nothing answers on {HOST}:{port}", err=True)
    raise typer.Exit(1)
