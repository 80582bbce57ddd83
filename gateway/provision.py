"""Provision a set of authorities and a signed directory in one working directory, with the real commands.

Used by ``comity demo`` and by the integration tests, so that both go through exactly what an operator runs:
``comity init`` per authority, ``comity directory keygen/new/add/sign``, then the pinned key and the signed
directory copied into each authority's data directory, and ``comity db upgrade``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway.cli import main

__all__ = ["AuthoritySpec", "Provisioned", "free_port", "provision"]


@dataclass(frozen=True)
class AuthoritySpec:
    id: str
    name: str
    country: str
    languages: tuple[str, ...] = ("en",)
    max_level: str = "STRICTLY CONFIDENTIAL"
    caveats: tuple[str, ...] = ("embargo", "no-onward", "uncac-46-19", "uncac-46-20")


@dataclass(frozen=True)
class Provisioned:
    spec: AuthoritySpec
    data_dir: Path
    config: Path
    federation_port: int
    api_port: int


_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT = 20000
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port that is free now, chosen below the kernel's ephemeral range where the kernel can tell (a port
    from that range may be handed to an outgoing connection, to PostgreSQL say, before the gateway binds it), and
    never one this process was given before (two gateways provisioned in turn must not get the same port)."""
    try:
        first_ephemeral = int(_EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = 0
    span = first_ephemeral - _LOWEST_PORT
    candidates = [secrets.randbelow(span) + _LOWEST_PORT for _ in range(50)] if span > 1000 else []
    for port in [*candidates, 0]:
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            chosen = int(sock.getsockname()[1])
        if chosen not in _HANDED_OUT:
            _HANDED_OUT.add(chosen)
            return chosen
    raise OSError("no free loopback port")  # pragma: no cover - port 0 always binds a new one in practice


@contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def comity(*args: str) -> None:
    """Run one ``comity`` command in this process; raise if it fails."""
    main.main(list(args), prog_name="comity", standalone_mode=False)


def provision(
    workdir: Path,
    specs: Sequence[AuthoritySpec],
    *,
    passphrase: str,
    fast_kdf: bool = True,
    plain_http: bool = False,
    database_urls: Sequence[str | None] | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> list[Provisioned]:
    """Create every authority of ``specs`` under ``workdir`` and a directory listing them all, signed."""
    workdir.mkdir(parents=True, exist_ok=True)
    fast = ["--kdf-fast"] if fast_kdf else []
    scheme = "http" if plain_http else "https"
    done: list[Provisioned] = []
    with _env(COMITY_PASSPHRASE=passphrase, COMITY_DIRECTORY_PASSPHRASE=passphrase):
        for spec in specs:
            federation_port, api_port = free_port(), free_port()
            data_dir = workdir / spec.id
            args = ["init", "--id", spec.id, "--name", spec.name, "--country", spec.country]
            args += ["--endpoint", f"{scheme}://127.0.0.1:{federation_port}", "--data-dir", str(data_dir)]
            args += ["--api-port", str(api_port), "--max-level", spec.max_level, *fast]
            for language in spec.languages:
                args += ["--language", language]
            for caveat in spec.caveats:
                args += ["--caveat", caveat]
            say(f"comity init --id {spec.id} ({spec.name})")
            comity(*args)
            config = data_dir / "comity.toml"
            done.append(Provisioned(spec, data_dir, config, federation_port, api_port))
        operator = workdir / "directory-operator"
        operator.mkdir(exist_ok=True)
        key, draft, signed = operator / "directory-key.sealed", operator / "draft.json", operator / "directory.jws"
        say("comity directory keygen / new / add / sign")
        comity("directory", "keygen", "--out", str(key), *fast)
        comity("directory", "new", "--out", str(draft))
        for item in done:
            comity("directory", "add", str(draft), str(item.data_dir / "entry.json"))
        comity("directory", "sign", str(draft), "--key", str(key), "--out", str(signed))
        public = Path(str(key) + ".pub.jwk")
        for index, item in enumerate(done):
            shutil.copyfile(signed, item.data_dir / "directory.jws")
            shutil.copyfile(public, item.data_dir / "directory-key.jwk")
            url = database_urls[index] if database_urls else None
            if url:
                with item.config.open("a", encoding="utf-8") as handle:
                    handle.write(f'database_url = "{url}"\n')
            comity("db", "upgrade", "--config", str(item.config))
    return done
