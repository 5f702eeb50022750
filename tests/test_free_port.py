"""free_port: the ports our embedded servers listen on cannot be taken by a
client socket in the meantime (CI once lost a run to nats-server's
"address already in use" on a port ``bind(0)`` had handed out)."""

from __future__ import annotations

import socket

from orchestrator.embedded import procs


def test_ports_come_from_below_the_ephemeral_range_and_are_never_repeated() -> None:
    low = procs._ephemeral_low()
    ports = [procs.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports), "a port was handed out twice"
    assert all(p < low for p in ports), f"a port in the ephemeral range (from {low})"


def test_a_port_some_server_listens_on_is_not_handed_out(monkeypatch) -> None:
    taken = procs.free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", taken))
        busy.listen()
        procs._handed_out.difference_update({taken, taken + 1})
        picks = iter([taken, taken, taken + 1])
        monkeypatch.setattr(procs.random.SystemRandom, "randrange", lambda *_: next(picks))
        assert procs.free_port() == taken + 1
