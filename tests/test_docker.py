"""docker/: the image and the compose file, checked without a container engine.

No container engine runs on these machines. So these tests check docker/compose.yaml and docker/Dockerfile against
the settings the gateway reads (config.settings.Settings), and run the image's exact ENTRYPOINT + CMD and its
HEALTHCHECK outside a container, against an authority provisioned with the real commands. The container paths map
to temporary ones (/data -> the data directory, /opt/venv -> this virtual environment, /run/secrets -> files
written here), the listeners bind 127.0.0.1 on free ports, and the database is a SQLite file or a fresh
PostgreSQL schema instead of the compose file's postgres service. Everything else is the environment that the
Dockerfile and compose.yaml set.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ipaddress
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from config.settings import CONFIG_ENV, ENV_PREFIX, PASSPHRASE_ENV, Settings, load_settings
from gateway.api import PUBLIC_PATHS
from gateway.cli.init import SETTINGS_FILE
from gateway.context import HEAD_REVISION
from gateway.openapi import openapi_document
from gateway.provision import AuthoritySpec, free_port, provision
from tests.conftest import DatabaseFactory


def _import_yaml() -> Any:
    # PyYAML, from the test extra; imported by name so that mypy needs no stub package for it
    try:
        return importlib.import_module("yaml")
    except ImportError:
        message = "PyYAML is needed to read docker/compose.yaml: pip install -e '.[test]'"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)


yaml = _import_yaml()

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
GATEWAYS = ("gateway-ar", "gateway-au")
PASSPHRASE_FILE_ENV = "COMITY_PASSPHRASE_FILE"  # read by docker/entrypoint.sh, never a setting
# COMITY_* variables that are not settings: the settings file, and the passphrase file the entrypoint reads
NOT_SETTINGS = {CONFIG_ENV, PASSPHRASE_FILE_ENV}
SECRETS_DIR = "/run/secrets"
PASSPHRASE = "correct horse battery staple"
STOP_TIMEOUT = 15.0


# --- the Dockerfile ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def _instructions(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile: comments dropped, continuation lines joined."""
    result: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        result.append(Instruction(keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends with a continuation line"
    return result


def _flags(arguments: str) -> tuple[dict[str, str], str]:
    """Split leading ``--name=value`` flags from an instruction's arguments."""
    flags: dict[str, str] = {}
    rest = arguments
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        name, _, value = flag[2:].partition("=")
        flags[name] = value
        rest = rest.strip()
    return flags, rest


def _exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and value and all(isinstance(item, str) for item in value), arguments
    return value


@dataclass(frozen=True)
class Image:
    """The final stage of docker/Dockerfile, as far as running it is concerned."""

    stages: list[str]  # base image of each stage
    env: dict[str, str]  # ENV of the final stage, in order, $VAR references unexpanded
    copies: dict[str, list[str]]  # destination -> sources, for COPY from the build context
    entrypoint: list[str]
    cmd: list[str]
    healthcheck: list[str]
    user: str
    volumes: list[str]
    exposed: list[int]
    workdir: str
    runs: list[str]  # RUN arguments of every stage


def _image() -> Image:
    instructions = _instructions((DOCKER / "Dockerfile").read_text(encoding="utf-8"))
    args: dict[str, str] = {}
    for item in instructions:
        if item.keyword == "FROM":
            break
        if item.keyword == "ARG":
            name, _, default = item.arguments.partition("=")
            args[name] = default
    stages = [_expand(item.arguments.split()[0], args) for item in instructions if item.keyword == "FROM"]
    last_from = max(index for index, item in enumerate(instructions) if item.keyword == "FROM")
    env: dict[str, str] = {}
    copies: dict[str, list[str]] = {}
    entrypoint: list[str] = []
    cmd: list[str] = []
    healthcheck: list[str] = []
    user = "root"
    volumes: list[str] = []
    exposed: list[int] = []
    workdir = "/"
    for item in instructions[last_from + 1 :]:
        if item.keyword == "ENV":
            for token in shlex.split(item.arguments):
                name, equals, value = token.partition("=")
                assert equals, f"ENV {item.arguments}: use the NAME=value form"
                env[name] = value
        elif item.keyword == "COPY":
            flags, rest = _flags(item.arguments)
            if "from" not in flags:
                *sources, destination = rest.split()
                copies[destination] = sources
        elif item.keyword == "ENTRYPOINT":
            entrypoint = _exec_form(item.arguments)
        elif item.keyword == "CMD":
            cmd = _exec_form(item.arguments)
        elif item.keyword == "HEALTHCHECK":
            _, rest = _flags(item.arguments)
            keyword, _, command = rest.partition(" ")
            assert keyword == "CMD", item.arguments
            healthcheck = _exec_form(command)
        elif item.keyword == "USER":
            user = item.arguments
        elif item.keyword == "VOLUME":
            volumes += _exec_form(item.arguments)
        elif item.keyword == "EXPOSE":
            exposed += [int(port.split("/")[0]) for port in item.arguments.split()]
        elif item.keyword == "WORKDIR":
            workdir = item.arguments
    runs = [item.arguments for item in instructions if item.keyword == "RUN"]
    return Image(stages, env, copies, entrypoint, cmd, healthcheck, user, volumes, exposed, workdir, runs)


def _expand(value: str, env: Mapping[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m[1] or m[2], ""), value)


# --- the compose file -------------------------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _service(name: str) -> dict[str, Any]:
    service = _compose()["services"][name]
    assert isinstance(service, dict)
    return service


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    assert all(isinstance(value, str) for value in environment.values()), "quote every value: compose wants strings"
    return dict(environment)


def _image_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The image's ENV, each value expanded as docker does, with ``base`` as the base image's environment."""
    env = dict(base or {})
    for key, value in _image().env.items():
        env[key] = _expand(value, env)
    return env


def _container_env(name: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment the gateway process sees in the container: the image's ENV, then the service's."""
    env = _image_env(base)
    env.update(_environment(_service(name)))
    return env


def _comity_vars(env: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if key.startswith(ENV_PREFIX)}


@dataclass(frozen=True)
class Published:
    host_ip: str
    host_port: int
    container_port: int


def _published(service: Mapping[str, Any]) -> list[Published]:
    result = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            result.append(Published(port.get("host_ip", ""), int(port["published"]), int(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        assert len(parts) in (2, 3), f"publish host and container port explicitly: {port}"
        host_ip = parts[0] if len(parts) == 3 else ""
        result.append(Published(host_ip, int(parts[-2]), int(parts[-1])))
    return result


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No COMITY_* variable of the test's own environment leaks into settings built here."""
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    return monkeypatch


def _settings_in_container(name: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings from the container's environment alone, without the settings file that `comity init` writes."""
    env = _container_env(name)
    for key, value in _comity_vars(env).items():
        if key not in NOT_SETTINGS:
            monkeypatch.setenv(key, value)
    return load_settings(None)


def _entrypoint_script(image: Image) -> Path:
    (source,) = image.copies[image.entrypoint[0]]
    return ROOT / source


# --- static checks ----------------------------------------------------------------------------------------------------


def test_dockerfile_builds_a_wheel_and_runs_it_as_a_non_root_user() -> None:
    image = _image()
    assert len(image.stages) >= 2, "multi-stage: build the wheel, then install it"
    assert all(stage == "python:3.11-slim" for stage in image.stages)
    assert any("pip wheel" in run for run in image.runs)
    assert any("venv" in run and "--no-index" in run for run in image.runs), "install from the built wheels only"
    assert image.user.split(":")[0] not in {"root", "0", ""}
    # the build copies every package that pyproject.toml ships, and only files that exist
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = [pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    build_text = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    for package in packages:
        assert f"COPY {package} ./{package}" in build_text, f"the build stage does not copy {package}/"
    assert re.search(r"^COPY pyproject\.toml README\.md\* \./$", build_text, re.MULTILINE), "copy the readme if any"
    for sources in image.copies.values():
        for source in sources:
            assert "*" in source or (ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_dockerfile_bakes_in_no_secret() -> None:
    image = _image()
    for key, value in image.env.items():
        assert key != PASSPHRASE_ENV, "the passphrase comes at run time, never from the image"
        assert not re.search(r"PASS|SECRET|TOKEN|KEY", key) or key.endswith("_FILE"), f"ENV {key}={value}"
    text = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    assert "ARG COMITY_PASSPHRASE" not in text and "ARG PGPASSWORD" not in text


def test_image_data_volume_is_the_data_dir_and_its_settings_file(clean_env: pytest.MonkeyPatch) -> None:
    image = _image()
    env = _image_env()
    data_dir = Path(env["COMITY_DATA_DIR"])
    assert image.volumes == [str(data_dir)]
    assert image.workdir == str(data_dir)
    assert Path(env[CONFIG_ENV]) == data_dir / SETTINGS_FILE
    # the default command serves that settings file
    script = _entrypoint_script(image).read_text(encoding="utf-8")
    assert image.cmd == ["serve"]
    assert f'config="${{{CONFIG_ENV}:-{data_dir / SETTINGS_FILE}}}"' in script
    assert 'comity db upgrade --config "$config"' in script
    assert 'exec comity serve --config "$config"' in script
    # EXPOSE: the ports the image configures
    clean_env.setenv("COMITY_AUTHORITY_ID", "ar.mj")
    for key, value in _comity_vars(env).items():
        if key not in NOT_SETTINGS:
            clean_env.setenv(key, value)
    settings = load_settings(None)
    assert settings.data_dir == data_dir
    assert sorted(image.exposed) == sorted([settings.api_port, settings.federation_port])


def test_healthcheck_asks_the_api_for_healthz() -> None:
    image = _image()
    assert image.healthcheck == [image.entrypoint[0], "healthcheck"]
    script = _entrypoint_script(image).read_text(encoding="utf-8")
    assert "settings.api_port}/healthz" in script
    assert "/healthz" in PUBLIC_PATHS, "the health check has no token"
    assert "/healthz" in openapi_document()["paths"]


def test_compose_services() -> None:
    compose = _compose()
    assert set(compose["services"]) == {"postgres", *GATEWAYS}
    postgres = compose["services"]["postgres"]
    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert "ports" not in postgres, "PostgreSQL stays on the compose network"
    named = {mount.split(":")[0]: mount.split(":")[1] for mount in postgres["volumes"]}
    assert named.get("postgres-data") == "/var/lib/postgresql/data"
    assert "postgres-data" in compose["volumes"]
    for name in GATEWAYS:
        service = compose["services"][name]
        assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
        assert (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == (
            DOCKER / "Dockerfile"
        )
        assert service["depends_on"] == {"postgres": {"condition": "service_healthy"}}


def test_compose_ports_are_the_ports_the_gateway_listens_on(clean_env: pytest.MonkeyPatch) -> None:
    host_ports: list[tuple[str, int]] = []
    for name in GATEWAYS:
        with pytest.MonkeyPatch.context() as patch:
            settings = _settings_in_container(name, patch)
        for host in (settings.api_host, settings.federation_host):
            assert ipaddress.ip_address(host).is_unspecified, f"{name}: bind every interface inside the container"
        published = _published(_service(name))
        targets = sorted(port.container_port for port in published)
        assert targets == sorted([settings.api_port, settings.federation_port]), name
        api = next(port for port in published if port.container_port == settings.api_port)
        assert api.host_ip == "127.0.0.1", f"{name}: publish the officer API on the host's loopback only"
        host_ports += [(port.host_ip, port.host_port) for port in published]
    assert len({port for _, port in host_ports}) == len(host_ports), "two services publish the same host port"


def test_compose_data_volumes_are_the_data_dir(clean_env: pytest.MonkeyPatch) -> None:
    compose = _compose()
    image = _image()
    seen = set()
    for name in GATEWAYS:
        with pytest.MonkeyPatch.context() as patch:
            settings = _settings_in_container(name, patch)
        mounts = {}
        for mount in _service(name)["volumes"]:
            source, target = str(mount).split(":")[:2]
            mounts[target] = source
        volume = mounts[str(settings.data_dir)]
        assert volume in compose["volumes"], f"{name}: {volume} is not a named volume"
        assert [str(settings.data_dir)] == image.volumes
        seen.add(volume)
    assert len(seen) == len(GATEWAYS), "each gateway has its own data volume"


def test_compose_settings_are_real_settings_and_validate(clean_env: pytest.MonkeyPatch) -> None:
    fields = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    databases = []
    for name in GATEWAYS:
        env = _container_env(name)
        for key in _comity_vars(_environment(_service(name))):
            assert key in fields or key in NOT_SETTINGS, f"{name}: {key} is not a setting of config.settings.Settings"
        assert PASSPHRASE_ENV not in env, f"{name}: the passphrase comes from {PASSPHRASE_FILE_ENV}"
        with pytest.MonkeyPatch.context() as patch:
            settings = _settings_in_container(name, patch)
        assert settings.database_url is not None
        url = urlsplit(settings.database_url)
        assert url.scheme == "postgresql+asyncpg"
        assert url.hostname == "postgres" and (url.port or 5432) == 5432
        assert url.password is None, "the database password comes from PGPASSWORD_FILE, not from the URL"
        databases.append(url.path.lstrip("/"))
    assert len(set(databases)) == len(databases), "each gateway has its own database"
    init_sql = (DOCKER / "postgres-init.sql").read_text(encoding="utf-8")
    created = re.findall(r"CREATE DATABASE (\w+)", init_sql)
    assert sorted(created) == sorted(databases), "postgres-init.sql creates the databases the gateways use"


def test_compose_secrets_are_files_the_services_mount() -> None:
    compose = _compose()
    for name in ("postgres", *GATEWAYS):
        service = compose["services"][name]
        env = _environment(service)
        for key, value in env.items():
            if re.search(r"PASS|SECRET|TOKEN", key):
                assert key.endswith("_FILE"), f"{name}: {key} holds a secret in the compose file"
                secret = value.removeprefix(SECRETS_DIR + "/")
                assert value == f"{SECRETS_DIR}/{secret}" and secret in service["secrets"], f"{name}: {key}"
                assert compose["secrets"][secret]["file"].startswith("./secrets/")
    ignored = (DOCKER / ".gitignore").read_text(encoding="utf-8").split()
    assert "secrets/" in ignored


# --- the entrypoint, run outside a container --------------------------------------------------------------------------


@dataclass(frozen=True)
class Outside:
    """How the container's paths and addresses map onto this machine."""

    data_dir: Path
    secrets: Path
    database_url: str
    api_port: int
    federation_port: int

    def paths(self) -> list[tuple[str, str]]:
        venv = Path(sys.executable).parent.parent  # not resolved: a venv's python is a symlink
        return [("/opt/venv", str(venv)), ("/data", str(self.data_dir)), (SECRETS_DIR, str(self.secrets))]

    def path(self, value: str) -> str:
        for container, here in self.paths():
            if value == container or value.startswith(container + "/"):
                return here + value[len(container) :]
        return value

    def environment(self, container_env: Mapping[str, str]) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}
        env.pop("PGPASSWORD", None)
        for key, value in container_env.items():
            if key == "PATH":
                value = os.pathsep.join(self.path(part) for part in value.split(os.pathsep))
            elif key.endswith("_HOST"):
                value = "127.0.0.1"
            elif key == "COMITY_API_PORT":
                value = str(self.api_port)
            elif key == "COMITY_FEDERATION_PORT":
                value = str(self.federation_port)
            elif key == "COMITY_DATABASE_URL":
                value = self.database_url
            else:
                value = self.path(value)
            env[key] = value
        return env

    def command(self, image: Image, argv: list[str]) -> list[str]:
        program = argv[0]
        if program in image.copies:
            (source,) = image.copies[program]
            program = str(ROOT / source)
        return [program, *argv[1:]]


def _healthz(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return int(response.status)
    except (urllib.error.URLError, OSError):
        return None


@dataclass
class Run:
    log: str
    returncode: int
    health_while_up: int
    health_after: int


def _run_entrypoint(outside: Outside, container_env: Mapping[str, str]) -> Run:
    image = _image()
    env = outside.environment(container_env)
    assert Path(env["PATH"].split(os.pathsep)[0]) == Path(sys.executable).parent
    assert (Path(sys.executable).parent / "comity").exists(), "comity is not installed beside this python"
    command = outside.command(image, image.entrypoint + image.cmd)
    healthcheck = outside.command(image, image.healthcheck)
    workdir = outside.path(image.workdir)
    log_path = outside.data_dir.parent / "entrypoint.log"
    with log_path.open("wb") as log:
        # a session of its own, so that nothing it starts outlives the test (SIGTERM still goes to this pid only,
        # as a container engine sends it to PID 1)
        process = subprocess.Popen(
            command, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 60
            while _healthz(outside.api_port) != 200:
                if process.poll() is not None:
                    pytest.fail(f"the entrypoint exited with {process.returncode}:\n{log_path.read_text()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"/healthz did not answer within 60 s:\n{log_path.read_text()}")
                time.sleep(0.2)
            health_while_up = subprocess.run(healthcheck, env=env, cwd=workdir, timeout=30, check=False).returncode
            process.send_signal(signal.SIGTERM)
            try:
                returncode = process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"no graceful exit within {STOP_TIMEOUT} s of SIGTERM:\n{log_path.read_text()}")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    health_after = subprocess.run(healthcheck, env=env, cwd=workdir, timeout=30, check=False).returncode
    return Run(log_path.read_text(encoding="utf-8"), returncode, health_while_up, health_after)


def _write_secrets(outside: Outside, container_env: Mapping[str, str]) -> None:
    """The secret files compose mounts: the passphrase, and a PostgreSQL password (unused by trust authentication)."""
    for key in (PASSPHRASE_FILE_ENV, "PGPASSWORD_FILE"):
        secret = Path(outside.path(container_env[key]))
        assert secret.parent == outside.secrets
        secret.write_text(PASSPHRASE + "\n" if key == PASSPHRASE_FILE_ENV else "not-a-real-password\n")
        secret.chmod(0o400)


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    return secrets


async def test_image_entrypoint_runs_outside_a_container(
    databases: DatabaseFactory, tmp_path: Path, secrets_dir: Path, clean_env: pytest.MonkeyPatch
) -> None:
    name = "gateway-ar"
    container_env = _container_env(name, {"PATH": os.environ["PATH"]})
    authority_id = container_env["COMITY_AUTHORITY_ID"]
    spec = AuthoritySpec(authority_id, "Ministerio de Justicia y Derechos Humanos", authority_id[:2].upper())
    # `comity init` and the signed directory, as an operator sets up /data before the first start
    (provisioned,) = await asyncio.to_thread(provision, tmp_path / "work", [spec], passphrase=PASSPHRASE)
    outside = Outside(
        data_dir=provisioned.data_dir,
        secrets=secrets_dir,
        database_url=await databases.new(authority_id.replace(".", "_")),
        api_port=free_port(),
        federation_port=free_port(),
    )
    await asyncio.to_thread(_write_secrets, outside, container_env)
    run = await asyncio.to_thread(_run_entrypoint, outside, container_env)

    assert run.health_while_up == 0, run.log
    assert run.returncode == 0, f"exit {run.returncode} after SIGTERM:\n{run.log}"
    assert run.health_after != 0, "the health check passes with no gateway running"
    assert f"database at {HEAD_REVISION}" in run.log, run.log
    assert "gateway_stopped" in run.log, run.log
    assert PASSPHRASE not in run.log


async def _entrypoint_alone(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """The image's default command, outside a container, with the gateway's environment and ``extra``; its secret
    file (COMITY_PASSPHRASE_FILE) is not there unless ``extra`` names one."""
    image = _image()
    outside = Outside(tmp_path / "data", tmp_path / "secrets", "sqlite+aiosqlite:///unused.db", 1, 2)
    env = outside.environment(_container_env("gateway-ar", {"PATH": os.environ["PATH"]})) | extra
    return await asyncio.to_thread(
        subprocess.run,
        outside.command(image, image.entrypoint + image.cmd),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_entrypoint_refuses_an_unreadable_passphrase_file(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    result = await _entrypoint_alone(tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("comity-entrypoint: COMITY_PASSPHRASE_FILE names ")


async def test_entrypoint_refuses_a_passphrase_given_both_directly_and_as_a_file(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """As the commands refuse both: before, the file silently won over the variable."""
    secret = tmp_path / "passphrase"
    secret.write_text("a passphrase from the file\n")
    result = await _entrypoint_alone(
        tmp_path, COMITY_PASSPHRASE_FILE=str(secret), COMITY_PASSPHRASE="a passphrase given directly"
    )
    assert result.returncode == 1, result
    assert result.stderr == (
        "comity-entrypoint: both COMITY_PASSPHRASE and COMITY_PASSPHRASE_FILE are set; set only one\n"
    )
