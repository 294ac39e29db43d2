"""The scale-mode manifests (deploy/scale) agree with what the code reads.

Docker and Kubernetes are not available to the test suite, so everything here is checked by
parsing: every YAML parses; every FEEDGRID_* variable the manifests set is a field of
schemas.settings.Settings (or of the workers' FEEDGRID_STREAM_* tuning) and its value
validates; the four variables a real deployment needs are set for the api, worker and migrate
roles; the commands are real `feedgrid` subcommands and options; Kafka runs 3 brokers with
replication factor 3 and the topics of schemas/topics.py; the ClickHouse cluster is 2 shards x
2 replicas and carries one name everywhere, including the `?cluster=` of FEEDGRID_CLICKHOUSE_URL
that `feedgrid migrate` reads.
"""

from __future__ import annotations

import ast
import base64
import re
import shlex
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from pydantic import ValidationError

from schemas.settings import Settings
from schemas.topics import TOPIC_SPECS, topic_name

ROOT = Path(__file__).resolve().parents[2]
SCALE = ROOT / "deploy" / "scale"
K8S = SCALE / "k8s"
COMPOSE_FILE = SCALE / "compose.yaml"
DOCKERFILE = SCALE / "Dockerfile"
CLUSTER_XML = SCALE / "clickhouse" / "config.d" / "feedgrid-cluster.xml"

PREFIX = "FEEDGRID_"
# Required in a real deployment (admin_token has a default of None in code, but an
# installation without it has no administrator).
REQUIRED = frozenset(
    {
        "FEEDGRID_DATABASE_URL",
        "FEEDGRID_KAFKA_BOOTSTRAP",
        "FEEDGRID_CLICKHOUSE_URL",
        "FEEDGRID_ADMIN_TOKEN",
    }
)
ROLES = ("api", "worker", "migrate")
KAFKA_BROKERS = 3
FEED_KEY = "feed_id"

Env = dict[str, str]
# The value of a variable set by reference (k8s valueFrom, compose pass-through): unknown here.
UNRESOLVED = "<resolved at run time>"


# ------------------------------------------------------------------------------ settings


def settings_variables() -> set[str]:
    return {PREFIX + name.upper() for name in Settings.model_fields}


def known_variables() -> set[str]:
    """Settings, plus the workers' FEEDGRID_STREAM_* knobs (streams/tuning.py) when present."""
    known = settings_variables()
    try:
        from streams.tuning import StreamTuning
    except Exception:  # noqa: BLE001 - optional: the streams package may be mid-edit
        return known
    prefix = str(StreamTuning.model_config.get("env_prefix", ""))
    return known | {prefix + name.upper() for name in StreamTuning.model_fields}


def clickhouse_cluster_of(url: str) -> str | None:
    """The cluster a FEEDGRID_CLICKHOUSE_URL names, as the code reads it."""
    try:
        from infra.clickhouse import cluster_name
    except Exception:  # noqa: BLE001 - same rule as infra.clickhouse.cluster_name
        values = parse_qs(urlparse(url).query).get("cluster")
        return values[0] if values else None
    return cluster_name(url)


def validate_settings(env: Env, where: str) -> None:
    """The FEEDGRID_* values of one workload must pass the Settings validators."""
    values = {
        key.removeprefix(PREFIX).lower(): value
        for key, value in env.items()
        if key.startswith(PREFIX) and value != UNRESOLVED
    }
    try:
        Settings(_env_file=None, **values)  # type: ignore[arg-type, call-arg]
    except ValidationError as error:
        problems = "; ".join(
            f"{PREFIX}{str(item['loc'][0]).upper()}: {item['msg']}" for item in error.errors()
        )
        pytest.fail(f"{where}: settings do not validate: {problems}")


# ------------------------------------------------------------------------------ the CLI


Commands = dict[str, set[str] | None]  # subcommand -> its options (None: not known statically)


@cache
def feedgrid_commands() -> tuple[Commands, str]:
    """The `feedgrid` subcommands, from the typer app, or from deploy/cli.py's source when the
    module does not import (other parts of the tree are edited concurrently)."""
    try:
        import typer.main

        from deploy.cli import app

        group = typer.main.get_command(app)
        commands: Commands = {}
        for name, command in group.commands.items():  # type: ignore[attr-defined]
            options: set[str] = {"--help"}
            for param in command.params:
                options.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("-"))
            commands[name] = options
        return commands, "typer"
    except Exception as error:  # noqa: BLE001 - any import failure means: read the source
        reason = f"{type(error).__name__}: {error}"
        warnings.warn(
            f"deploy.cli did not import ({reason}); feedgrid subcommands parsed from its source",
            stacklevel=2,
        )
        return static_commands(), f"ast ({reason})"


def _keyword(call: ast.Call, name: str) -> Any:
    for keyword in call.keywords:
        if keyword.arg == name and isinstance(keyword.value, ast.Constant):
            return keyword.value.value
    return None


def _is_app_method(node: ast.AST, method: str) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == method
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "app"
    )


def _function_options(function: ast.FunctionDef) -> set[str]:
    """Options typer derives from a command's parameters (declared flags or --param-name)."""
    options = {"--help"}
    params = function.args.args + function.args.kwonlyargs
    defaults = (
        [None] * (len(function.args.args) - len(function.args.defaults))
        + list(function.args.defaults)
        + list(function.args.kw_defaults)
    )
    for param, default in zip(params, defaults, strict=True):
        declared: list[str] = []
        is_argument = False
        for node in ast.walk(param.annotation) if param.annotation else ():
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "Argument":
                    is_argument = True
                if node.func.attr == "Option":
                    declared += [
                        a.value
                        for a in node.args
                        if isinstance(a, ast.Constant) and isinstance(a.value, str)
                    ]
        if is_argument:
            continue
        if declared:
            for declaration in declared:
                options.update(part for part in declaration.split("/") if part.startswith("-"))
            continue
        flag = "--" + param.arg.replace("_", "-")
        options.add(flag)
        annotation = ast.unparse(param.annotation) if param.annotation else ""
        if (
            isinstance(default, ast.Constant)
            and isinstance(default.value, bool)
            or "bool" in annotation
        ):
            options.add("--no-" + param.arg.replace("_", "-"))
    return options


def static_commands() -> Commands:
    tree = ast.parse((ROOT / "deploy" / "cli.py").read_text())
    commands: Commands = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                if _is_app_method(decorator, "command"):
                    assert isinstance(decorator, ast.Call)
                    name = _keyword(decorator, "name")
                    if (
                        name is None
                        and decorator.args
                        and isinstance(decorator.args[0], ast.Constant)
                    ):
                        name = decorator.args[0].value
                    commands[name or node.name.lower().replace("_", "-")] = _function_options(node)
        elif isinstance(node, ast.Call):
            if _is_app_method(node, "add_typer") and _keyword(node, "name"):
                commands[_keyword(node, "name")] = None  # a group: its options are its own
            elif _is_app_method(node.func, "command"):  # app.command(name="seed")(seed_command)
                assert isinstance(node.func, ast.Call)
                name = _keyword(node.func, "name")
                if name is None and node.args and isinstance(node.args[0], ast.Name):
                    name = node.args[0].id.lower().replace("_", "-")
                if name:
                    commands[name] = None  # defined in another module
    return commands


def check_command(argv: list[str], where: str) -> str:
    """argv is what follows `feedgrid`; returns the subcommand after checking it and its options."""
    commands, source = feedgrid_commands()
    assert argv, f"{where}: no feedgrid subcommand given"
    subcommand = argv[0]
    assert subcommand in commands, (
        f"{where}: `feedgrid {subcommand}` is not a subcommand "
        f"(known via {source}: {sorted(commands)})"
    )
    known = commands[subcommand]
    if known is not None:
        for token in argv[1:]:
            if token.startswith("--"):
                option = token.split("=", 1)[0]
                assert option in known, f"{where}: `feedgrid {subcommand}` has no option {option}"
    return subcommand


# ------------------------------------------------------------------------------ files


def scale_yaml_files() -> list[Path]:
    return sorted(p for p in SCALE.rglob("*") if p.suffix in {".yaml", ".yml"})


@cache
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document


@cache
def k8s_documents() -> tuple[tuple[str, dict[str, Any]], ...]:
    documents = []
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                documents.append((path.name, document))
    return tuple(documents)


def k8s_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_documents() if doc.get("kind") == kind]


def k8s_one(kind: str) -> dict[str, Any]:
    found = k8s_kind(kind)
    assert len(found) == 1, f"expected exactly one {kind} in deploy/scale/k8s, found {len(found)}"
    return found[0]


def read_env_file(path: Path) -> Env:
    """KEY=VALUE lines. A git-ignored secrets file that is absent is read from its .example."""
    if not path.exists():
        example = path.with_name(path.name + ".example")
        assert example.exists(), f"{path} is referenced but neither it nor {example.name} exists"
        path = example
    env: Env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def env_file_paths(service: dict[str, Any]) -> list[Path]:
    entries = service.get("env_file") or []
    if isinstance(entries, str | dict):
        entries = [entries]
    return [SCALE / (entry["path"] if isinstance(entry, dict) else entry) for entry in entries]


def compose_env(service: dict[str, Any]) -> Env:
    env: Env = {}
    for path in env_file_paths(service):
        env.update(read_env_file(path))
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(
            item.split("=", 1) if "=" in item else (item, None) for item in environment
        )
    env.update({k: UNRESOLVED if v is None else str(v) for k, v in environment.items()})
    return env


def compose_argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def is_feedgrid_service(service: dict[str, Any]) -> bool:
    build = service.get("build") or {}
    dockerfile = build.get("dockerfile", "") if isinstance(build, dict) else ""
    return str(dockerfile).endswith("deploy/scale/Dockerfile")


def feedgrid_services() -> dict[str, dict[str, Any]]:
    services = {n: s for n, s in compose()["services"].items() if is_feedgrid_service(s)}
    assert services, "compose.yaml has no service built from deploy/scale/Dockerfile"
    return services


def compose_role(role: str) -> tuple[str, dict[str, Any]]:
    matches = [
        (name, service)
        for name, service in feedgrid_services().items()
        if compose_argv(service)[:1] == [role]
    ]
    assert len(matches) == 1, f"compose.yaml: expected one service running `feedgrid {role}`"
    return matches[0]


def services_by_image(prefix: str) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose()["services"].items()
        if str(service.get("image", "")).startswith(prefix)
    }


def k8s_secret_data(secret: dict[str, Any]) -> Env:
    data = {k: str(v) for k, v in (secret.get("stringData") or {}).items()}
    for key, value in (secret.get("data") or {}).items():
        data[key] = base64.b64decode(value).decode()
    return data


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def k8s_workloads() -> list[dict[str, Any]]:
    kinds = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
    return [doc for _, doc in k8s_documents() if doc.get("kind") in kinds]


def k8s_container_env(container: dict[str, Any]) -> Env:
    configmaps = {d["metadata"]["name"]: d for d in k8s_kind("ConfigMap")}
    secrets = {d["metadata"]["name"]: d for d in k8s_kind("Secret")}
    env: Env = {}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            assert name in configmaps, f"envFrom names ConfigMap {name}, not in deploy/scale/k8s"
            env.update({k: str(v) for k, v in (configmaps[name].get("data") or {}).items()})
        if "secretRef" in source:
            name = source["secretRef"]["name"]
            assert name in secrets, f"envFrom names Secret {name}, not in deploy/scale/k8s"
            env.update(k8s_secret_data(secrets[name]))
    for item in container.get("env") or []:
        env[item["name"]] = str(item["value"]) if "value" in item else UNRESOLVED
    return env


def k8s_feedgrid_containers() -> list[tuple[dict[str, Any], dict[str, Any], list[str]]]:
    """(workload, container, argv after `feedgrid`) for every container running feedgrid."""
    found = []
    for workload in k8s_workloads():
        for container in pod_spec(workload).get("containers", []):
            argv = [
                str(a) for a in (container.get("command") or []) + (container.get("args") or [])
            ]
            if argv[:1] == ["feedgrid"]:
                found.append((workload, container, argv[1:]))
    return found


def k8s_role(role: str) -> tuple[dict[str, Any], dict[str, Any]]:
    matches = [(w, c) for w, c, argv in k8s_feedgrid_containers() if argv[:1] == [role]]
    assert len(matches) == 1, f"deploy/scale/k8s: expected one container running `feedgrid {role}`"
    return matches[0]


def option_value(argv: list[str], option: str) -> str:
    assert option in argv, f"`feedgrid {' '.join(argv)}` does not pass {option}"
    return argv[argv.index(option) + 1]


def hosts_of(bootstrap: str) -> list[tuple[str, int]]:
    pairs = []
    for entry in bootstrap.split(","):
        host, _, port = entry.strip().rpartition(":")
        pairs.append((host, int(port)))
    return pairs


def dockerfile_instruction(name: str) -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [line.split(None, 1)[1] for line in text.splitlines() if line.startswith(name + " ")]


def dockerfile_env() -> Env:
    env: Env = {}
    for instruction in dockerfile_instruction("ENV"):
        for token in shlex.split(instruction):
            key, _, value = token.partition("=")
            env[key] = value
    return env


# ------------------------------------------------------------------------------ parsing


def test_scale_directory_has_the_expected_manifests() -> None:
    for path in (COMPOSE_FILE, DOCKERFILE, CLUSTER_XML, SCALE / "CAPACITY.md"):
        assert path.exists(), f"missing {path.relative_to(ROOT)}"
    kinds = Counter(doc.get("kind") for _, doc in k8s_documents())
    for kind in (
        "Namespace",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "Job",
        "PodDisruptionBudget",
        "Kafka",
        "KafkaNodePool",
        "KafkaTopic",
        "ClickHouseInstallation",
        "ClickHouseKeeperInstallation",
        "Cluster",
    ):
        assert kinds[kind] >= 1, f"deploy/scale/k8s has no {kind}"


@pytest.mark.parametrize("path", scale_yaml_files(), ids=lambda p: str(p.relative_to(SCALE)))
def test_every_yaml_parses(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents, f"{path} is empty"
    if path.parent == K8S:
        for document in documents:
            assert {"apiVersion", "kind"} <= set(document), (
                f"{path.name}: a document lacks apiVersion/kind"
            )
            if document["kind"] not in {"Namespace", "Kustomization"}:
                assert document["metadata"].get("namespace") == "feedgrid", (
                    f"{path.name}: {document['kind']} {document['metadata'].get('name')} "
                    "has no namespace"
                )


@pytest.mark.parametrize(
    "path", sorted((SCALE / "clickhouse").rglob("*.xml")), ids=lambda p: str(p.relative_to(SCALE))
)
def test_every_clickhouse_config_parses(path: Path) -> None:
    assert ET.parse(path).getroot().tag == "clickhouse"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


# ------------------------------------------------------------------------------ settings


def test_required_variables_are_settings_fields() -> None:
    variables = settings_variables()
    assert REQUIRED <= variables
    without_default = {
        PREFIX + n.upper() for n, f in Settings.model_fields.items() if f.is_required()
    }
    assert without_default <= REQUIRED, "a new Settings field without default must join REQUIRED"


def all_feedgrid_assignments() -> list[tuple[str, str]]:
    """(where, variable) for every FEEDGRID_* variable any manifest sets."""
    found: list[tuple[str, str]] = []
    for name, service in compose()["services"].items():
        found += [(f"compose service {name}", key) for key in compose_env(service)]
    for name in ("x-feedgrid-env",):
        found += [(f"compose {name}", key) for key in compose().get(name, {})]
    for path in sorted((SCALE / "env").glob("*.env*")):
        found += [(str(path.relative_to(SCALE)), key) for key in read_env_file(path)]
    for doc in k8s_kind("ConfigMap"):
        found += [(f"ConfigMap {doc['metadata']['name']}", key) for key in doc.get("data") or {}]
    for doc in k8s_kind("Secret"):
        found += [(f"Secret {doc['metadata']['name']}", key) for key in k8s_secret_data(doc)]
    for workload in k8s_workloads():
        for container in pod_spec(workload).get("containers", []):
            where = f"{workload['kind']} {workload['metadata']['name']}/{container['name']}"
            found += [(where, item["name"]) for item in container.get("env") or []]
    found += [("Dockerfile ENV", key) for key in dockerfile_env()]
    return [(where, key) for where, key in found if key.startswith(PREFIX)]


def test_every_feedgrid_variable_set_is_a_settings_field() -> None:
    assignments = all_feedgrid_assignments()
    assert len(assignments) > 20
    unknown = sorted(
        {f"{key} ({where})" for where, key in assignments if key not in known_variables()}
    )
    assert not unknown, f"set in deploy/scale but read by no settings class: {unknown}"


@pytest.mark.parametrize("role", ROLES)
def test_compose_role_sets_every_required_variable_with_valid_values(role: str) -> None:
    name, service = compose_role(role)
    env = compose_env(service)
    missing = sorted(REQUIRED - {k for k, v in env.items() if v and v != UNRESOLVED})
    assert not missing, f"compose service {name} does not set {missing}"
    validate_settings(env, f"compose service {name}")


@pytest.mark.parametrize("role", ROLES)
def test_k8s_role_sets_every_required_variable_with_valid_values(role: str) -> None:
    workload, container = k8s_role(role)
    env = k8s_container_env(container)
    missing = sorted(REQUIRED - set(env))
    assert not missing, f"{workload['kind']} {workload['metadata']['name']} does not set {missing}"
    validate_settings(env, f"{workload['kind']} {workload['metadata']['name']}")


def test_api_replicas_do_not_embed_the_worker() -> None:
    _, service = compose_role("api")
    assert compose_env(service).get("FEEDGRID_EMBEDDED_WORKER") == "false"
    _, container = k8s_role("api")
    assert k8s_container_env(container).get("FEEDGRID_EMBEDDED_WORKER") == "false"


# ------------------------------------------------------------------------------ commands


def test_compose_and_k8s_commands_are_feedgrid_subcommands() -> None:
    commands, source = feedgrid_commands()
    assert {"api", "worker", "migrate"} <= set(commands), f"via {source}: {sorted(commands)}"
    entrypoint = dockerfile_instruction("ENTRYPOINT")
    assert entrypoint and yaml.safe_load(entrypoint[-1]) == ["feedgrid"], (
        "image ENTRYPOINT must be feedgrid"
    )
    check_command(yaml.safe_load(dockerfile_instruction("CMD")[-1]), "Dockerfile CMD")
    roles = set()
    for name, service in feedgrid_services().items():
        assert "entrypoint" not in service, (
            f"compose service {name} overrides the feedgrid entrypoint"
        )
        roles.add(check_command(compose_argv(service), f"compose service {name}"))
    assert roles == set(ROLES)
    roles = set()
    for workload, _container, argv in k8s_feedgrid_containers():
        roles.add(check_command(argv, f"{workload['kind']} {workload['metadata']['name']}"))
    assert roles == set(ROLES)


def test_static_command_parse_matches_typer_when_the_cli_imports() -> None:
    commands, source = feedgrid_commands()
    if source != "typer":
        pytest.skip(f"deploy.cli does not import right now; used the static parse: {source}")
    static = static_commands()
    assert set(static) == set(commands)
    for name, options in static.items():
        if options is not None:
            assert options == commands[name], name


def test_api_listens_where_the_balancer_and_probes_look() -> None:
    _, service = compose_role("api")
    argv = compose_argv(service)
    host, port = option_value(argv, "--host"), int(option_value(argv, "--port"))
    assert host == "0.0.0.0"
    nginx = (SCALE / "nginx" / "api.conf").read_text()
    assert re.search(rf"server\s+{re.escape(compose_role('api')[0])}:{port}\b", nginx)
    limit = re.search(r"client_max_body_size\s+(\d+)m;", nginx)
    body_bytes = int(
        compose_env(service).get("FEEDGRID_MAX_BODY_BYTES")
        or Settings.model_fields["max_body_bytes"].default
    )
    assert limit and int(limit.group(1)) * 1024 * 1024 == body_bytes

    workload, container = k8s_role("api")
    argv = [str(a) for a in container["command"]][1:]
    k8s_port = int(option_value(argv, "--port"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert k8s_port in ports.values()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        target = container[probe]["httpGet"]["port"]
        assert ports.get(target, target) == k8s_port
    labels = workload["spec"]["template"]["metadata"]["labels"]
    services = [s for s in k8s_kind("Service") if s["spec"]["selector"].items() <= labels.items()]
    assert services, "no Service selects the api pods"
    assert all(
        ports.get(p["targetPort"], p["targetPort"]) == k8s_port
        for s in services
        for p in s["spec"]["ports"]
    )
    hpa = k8s_one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"]
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_every_feedgrid_workload_has_resources_and_a_budget() -> None:
    budgets = k8s_kind("PodDisruptionBudget")
    for workload, container, _ in k8s_feedgrid_containers():
        name = f"{workload['kind']} {workload['metadata']['name']}"
        assert {"requests", "limits"} <= set(container.get("resources", {})), (
            f"{name}: no resources"
        )
        if workload["kind"] == "Deployment":
            labels = workload["spec"]["template"]["metadata"]["labels"]
            assert any(
                b["spec"]["selector"]["matchLabels"].items() <= labels.items() for b in budgets
            ), f"{name}: no PodDisruptionBudget"


# ------------------------------------------------------------------------------ Kafka


def compose_brokers() -> dict[str, Env]:
    return {
        name: compose_env(service)
        for name, service in services_by_image("apache/kafka").items()
        if "broker" in (compose_env(service).get("KAFKA_PROCESS_ROLES") or "")
    }


def topic_prefix(env: Env) -> str:
    return env.get("FEEDGRID_TOPIC_PREFIX") or Settings.model_fields["topic_prefix"].default


def expected_topics(prefix: str) -> dict[str, Any]:
    return {topic_name(prefix, spec.suffix): spec for spec in TOPIC_SPECS}


TopicPlan = dict[str, tuple[int, int, dict[str, str]]]  # name -> partitions, RF, configs


def compose_topics() -> TopicPlan:
    """Topics the kafka-init one-shot creates, read from its kafka-topics.sh --create lines."""
    plan: TopicPlan = {}
    for service in services_by_image("apache/kafka").values():
        script = " ".join(compose_argv(service)).replace("\\\n", " ")
        for line in script.splitlines():
            tokens = shlex.split(line)
            if not tokens or not tokens[0].endswith("kafka-topics.sh") or "--create" not in tokens:
                continue

            def value(flag: str, tokens: list[str] = tokens) -> str:
                return tokens[tokens.index(flag) + 1]

            configs = dict(
                tokens[i + 1].split("=", 1) for i, t in enumerate(tokens) if t == "--config"
            )
            plan[value("--topic")] = (
                int(value("--partitions")),
                int(value("--replication-factor")),
                configs,
            )
    return plan


def k8s_topics() -> TopicPlan:
    return {
        doc["spec"].get("topicName", doc["metadata"]["name"]): (
            int(doc["spec"]["partitions"]),
            int(doc["spec"]["replicas"]),
            {k: str(v) for k, v in (doc["spec"].get("config") or {}).items()},
        )
        for doc in k8s_kind("KafkaTopic")
    }


def check_topic_plan(plan: TopicPlan, env: Env, brokers: int, where: str) -> None:
    expected = expected_topics(topic_prefix(env))
    assert set(plan) == set(expected), f"{where}: topics differ from schemas/topics.py"
    partitions = int(env["FEEDGRID_TOPIC_PARTITIONS"])
    for name, (count, replicas, configs) in plan.items():
        assert replicas == int(env["FEEDGRID_TOPIC_REPLICATION"]) == brokers == KAFKA_BROKERS, (
            f"{where}: {name} replication factor {replicas}"
        )
        assert configs.get("min.insync.replicas") == "2", f"{where}: {name} min ISR"
        for key, wanted in expected[name].config.items():
            assert configs.get(key) == wanted, (
                f"{where}: {name} {key}={configs.get(key)}, code says {wanted}"
            )
        if expected[name].key == FEED_KEY:
            assert count == partitions, (
                f"{where}: feed_id topics must be co-partitioned ({name}: {count})"
            )


def test_compose_runs_three_kraft_brokers_with_replication_three() -> None:
    brokers = compose_brokers()
    assert len(brokers) == KAFKA_BROKERS
    node_ids = {}
    for name, env in brokers.items():
        assert int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == KAFKA_BROKERS
        assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == KAFKA_BROKERS
        assert int(env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"]) == KAFKA_BROKERS
        assert int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == 2
        assert int(env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"]) == 2
        assert f"//{name}:" in env["KAFKA_ADVERTISED_LISTENERS"], f"{name} advertises another host"
        node_ids[env["KAFKA_NODE_ID"]] = name
    assert len(node_ids) == KAFKA_BROKERS, "node ids must differ"
    assert len({env["CLUSTER_ID"] for env in brokers.values()}) == 1
    for env in brokers.values():
        voters = dict(v.split("@", 1) for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
        assert {i: h.rsplit(":", 1)[0] for i, h in voters.items()} == node_ids


def test_compose_feedgrid_reaches_every_broker_and_creates_the_code_topics() -> None:
    brokers = compose_brokers()
    for name, service in feedgrid_services().items():
        env = compose_env(service)
        assert {h for h, _ in hosts_of(env["FEEDGRID_KAFKA_BOOTSTRAP"])} == set(brokers), name
        assert int(env["FEEDGRID_TOPIC_REPLICATION"]) == len(brokers)
    _, migrate = compose_role("migrate")
    check_topic_plan(compose_topics(), compose_env(migrate), len(brokers), "compose kafka-init")
    init = [n for n, s in services_by_image("apache/kafka").items() if n not in brokers]
    assert any(
        migrate["depends_on"].get(n, {}).get("condition") == "service_completed_successfully"
        for n in init
    ), "migrate must wait for the topics"


def test_k8s_kafka_has_three_brokers_and_the_same_topics_as_compose() -> None:
    kafka = k8s_one("Kafka")
    name = kafka["metadata"]["name"]
    pools = [
        p
        for p in k8s_kind("KafkaNodePool")
        if p["metadata"]["labels"]["strimzi.io/cluster"] == name
    ]
    brokers = sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])
    controllers = sum(p["spec"]["replicas"] for p in pools if "controller" in p["spec"]["roles"])
    assert brokers == KAFKA_BROKERS and controllers % 2 == 1
    config = kafka["spec"]["kafka"]["config"]
    assert int(config["default.replication.factor"]) == KAFKA_BROKERS
    assert int(config["offsets.topic.replication.factor"]) == KAFKA_BROKERS
    assert int(config["transaction.state.log.replication.factor"]) == KAFKA_BROKERS
    assert int(config["min.insync.replicas"]) == 2
    for topic in k8s_kind("KafkaTopic"):
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == name
    _, container = k8s_role("api")
    env = k8s_container_env(container)
    plain = [lst["port"] for lst in kafka["spec"]["kafka"]["listeners"] if not lst.get("tls")]
    assert hosts_of(env["FEEDGRID_KAFKA_BOOTSTRAP"]) == [(f"{name}-kafka-bootstrap", plain[0])]
    check_topic_plan(k8s_topics(), env, brokers, "k8s KafkaTopic")
    assert k8s_topics() == compose_topics(), "compose and k8s plan different topics"


# ------------------------------------------------------------------------------ ClickHouse


def child(element: ET.Element, tag: str) -> ET.Element:
    found = element.find(tag)
    assert found is not None, f"<{element.tag}> has no <{tag}>"
    return found


def text(element: ET.Element, tag: str) -> str:
    return (child(element, tag).text or "").strip()


def cluster_config() -> tuple[str, list[list[str]], list[tuple[str, str]]]:
    """(cluster name, shards as lists of replica hosts, keeper (host, port)s) from the XML."""
    root = ET.parse(CLUSTER_XML).getroot()
    clusters = list(child(root, "remote_servers"))
    assert len(clusters) == 1, "remote_servers must declare exactly the feedgrid cluster"
    cluster = clusters[0]
    shards = []
    for shard in cluster.findall("shard"):
        assert text(shard, "internal_replication") == "true"
        shards.append([text(replica, "host") for replica in shard.findall("replica")])
    keepers = [(text(n, "host"), text(n, "port")) for n in child(root, "zookeeper").findall("node")]
    return cluster.tag, shards, keepers


def mounted_file(service: dict[str, Any], target: str) -> Path | None:
    for volume in service.get("volumes") or []:
        source, _, rest = str(volume).partition(":")
        if rest.split(":")[0] == target and source.startswith("."):
            return (SCALE / source).resolve()
    return None


def test_clickhouse_cluster_is_two_shards_of_two_replicas() -> None:
    name, shards, _ = cluster_config()
    assert len(shards) == 2 and all(len(replicas) == 2 for replicas in shards)
    servers = services_by_image("clickhouse/clickhouse-server")
    assert sorted(h for replicas in shards for h in replicas) == sorted(servers)
    for service_name, service in feedgrid_services().items():
        url = compose_env(service)["FEEDGRID_CLICKHOUSE_URL"]
        assert clickhouse_cluster_of(url) == name, f"{service_name}: ?cluster= is not {name}"

    shard_macros: dict[str, set[str]] = {}
    replica_macros = []
    for index, replicas in enumerate(shards):
        for host in replicas:
            service = servers[host]
            assert (
                mounted_file(service, f"/etc/clickhouse-server/config.d/{CLUSTER_XML.name}")
                == CLUSTER_XML
            )
            macros_path = mounted_file(service, "/etc/clickhouse-server/config.d/macros.xml")
            assert macros_path is not None, f"{host} has no macros"
            macros = child(ET.parse(macros_path).getroot(), "macros")
            assert text(macros, "cluster") == name
            shard_macros.setdefault(str(index), set()).add(text(macros, "shard"))
            replica_macros.append(text(macros, "replica"))
    assert all(len(values) == 1 for values in shard_macros.values()), "one {shard} per shard"
    assert len({v for values in shard_macros.values() for v in values}) == 2, (
        "shards need distinct {shard}"
    )
    assert len(set(replica_macros)) == 4, "every server needs its own {replica}"


def test_clickhouse_keeper_ensemble_matches_the_servers_config() -> None:
    _, _, keeper_nodes = cluster_config()
    keepers = services_by_image("clickhouse/clickhouse-keeper")
    assert sorted(host for host, _ in keeper_nodes) == sorted(keepers) and len(keepers) == 3
    ids = {}
    for name, service in keepers.items():
        path = mounted_file(service, "/etc/clickhouse-keeper/keeper_config.xml")
        assert path is not None, f"{name} mounts no keeper config"
        keeper = child(ET.parse(path).getroot(), "keeper_server")
        raft = {
            text(server, "hostname"): text(server, "id")
            for server in child(keeper, "raft_configuration").findall("server")
        }
        assert sorted(raft) == sorted(keepers)
        ids[name] = text(keeper, "server_id")
        assert raft[name] == ids[name], f"{name}: server_id is not its raft id"
        assert {port for _, port in keeper_nodes} == {text(keeper, "tcp_port")}
    assert len(set(ids.values())) == 3


def test_compose_feedgrid_reaches_clickhouse_and_postgres_as_configured() -> None:
    servers = services_by_image("clickhouse/clickhouse-server")
    server_env = compose_env(next(iter(servers.values())))
    postgres_name, postgres = next(iter(services_by_image("postgis/postgis").items()))
    postgres_env = compose_env(postgres)
    for name, service in feedgrid_services().items():
        env = compose_env(service)
        clickhouse = urlparse(env["FEEDGRID_CLICKHOUSE_URL"])
        assert clickhouse.hostname in compose()["services"], f"{name}: unknown ClickHouse host"
        assert clickhouse.username == server_env["CLICKHOUSE_USER"]
        assert clickhouse.password == server_env["CLICKHOUSE_PASSWORD"]
        assert clickhouse.path.strip("/") == server_env["CLICKHOUSE_DB"]
        database = urlparse(env["FEEDGRID_DATABASE_URL"])
        assert database.hostname == postgres_name
        assert database.username == postgres_env["POSTGRES_USER"]
        assert database.password == postgres_env["POSTGRES_PASSWORD"]
        assert database.path.strip("/") == postgres_env["POSTGRES_DB"]
    # The ClickHouse balancer forwards to every server's HTTP port.
    balancer = compose()["services"][urlparse(env["FEEDGRID_CLICKHOUSE_URL"]).hostname]
    conf = mounted_file(balancer, "/etc/nginx/nginx.conf")
    assert conf is not None
    upstreams = set(re.findall(r"server\s+([\w.-]+):8123\b", conf.read_text()))
    assert upstreams == set(servers)


def test_k8s_clickhouse_matches_the_cluster_config() -> None:
    name, shards, _ = cluster_config()
    chi = k8s_one("ClickHouseInstallation")
    chk = k8s_one("ClickHouseKeeperInstallation")
    clusters = chi["spec"]["configuration"]["clusters"]
    assert [c["name"] for c in clusters] == [name]
    layout = clusters[0]["layout"]
    assert (
        (layout["shardsCount"], layout["replicasCount"]) == (len(shards), len(shards[0])) == (2, 2)
    )
    assert sum(c["layout"]["replicasCount"] for c in chk["spec"]["configuration"]["clusters"]) == 3
    zookeeper = chi["spec"]["configuration"]["zookeeper"]["nodes"]
    assert [n["host"] for n in zookeeper] == [f"keeper-{chk['metadata']['name']}"]
    for role in ROLES:
        _, container = k8s_role(role)
        url = k8s_container_env(container)["FEEDGRID_CLICKHOUSE_URL"]
        assert clickhouse_cluster_of(url) == name, f"k8s {role}: ?cluster= is not {name}"
    _, container = k8s_role("api")
    env = k8s_container_env(container)
    assert (
        urlparse(env["FEEDGRID_CLICKHOUSE_URL"]).hostname == f"clickhouse-{chi['metadata']['name']}"
    )
    cnpg = k8s_one("Cluster")
    database = urlparse(env["FEEDGRID_DATABASE_URL"])
    assert database.hostname == f"{cnpg['metadata']['name']}-rw"
    assert database.username == cnpg["spec"]["bootstrap"]["initdb"]["owner"]
    assert database.path.strip("/") == cnpg["spec"]["bootstrap"]["initdb"]["database"]


def test_api_replicas_share_one_writable_signing_key_directory() -> None:
    """The key ring (registry_api/tokens/keyring.py) is written by whichever replica rotates."""
    name, service = compose_role("api")
    key_dir = compose_env(service).get("FEEDGRID_SIGNING_KEY_DIR")
    assert key_dir, f"compose service {name} does not set FEEDGRID_SIGNING_KEY_DIR"
    volumes = compose().get("volumes") or {}
    mounts = [str(v).split(":") for v in service.get("volumes") or []]
    shared = [m for m in mounts if m[1] == key_dir and m[0] in volumes]
    assert shared and "ro" not in shared[0][2:], (
        f"{name}: {key_dir} is not a shared writable volume"
    )

    workload, container = k8s_role("api")
    key_dir = k8s_container_env(container).get("FEEDGRID_SIGNING_KEY_DIR")
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == key_dir)
    assert not mount.get("readOnly")
    volume = next(v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"])
    claim = next(
        c
        for c in k8s_kind("PersistentVolumeClaim")
        if c["metadata"]["name"] == volume["persistentVolumeClaim"]["claimName"]
    )
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
