"""Ports for provisioned gateways come from below the kernel's ephemeral range, so that no outgoing connection takes
one before the gateway binds it (a test once failed with "address already in use")."""

from __future__ import annotations

import socket
from pathlib import Path

from gateway.provision import free_port


def test_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports)
    first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(20000 <= port < first_ephemeral for port in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # still free
