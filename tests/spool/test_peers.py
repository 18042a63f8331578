"""Owners on other hosts: judged by their heartbeat in state/, taken over after peer_timeout_s."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.core.config import Settings
from daemon.spool import owner as owner_mod
from daemon.spool.claim import claim
from daemon.spool.layout import ensure_layout
from daemon.spool.peers import Heartbeat, Peers, heartbeat_path
from daemon.spool.recover import recover


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    s = make_settings(peer_timeout_s=10, heartbeat_interval_s=1)
    ensure_layout(s)
    return s


@pytest.fixture(autouse=True)
def _real_identity() -> Iterator[None]:
    yield
    owner_mod.pretend_host(None)


def _claim_as_remote(settings: Settings, name: str, *, beat: bool = True) -> tuple[Path, owner_mod.Owner]:
    """A job claimed by a daemon that looks like one on host node-b (and its heartbeat)."""
    owner_mod.pretend_host("node-b")
    try:
        (settings.inbox / name).write_text("prompt: a tune from another node\nduration: 0.5\n")
        claimed = claim(settings, settings.inbox / name)
        assert claimed is not None and claimed.owner is not None
        if beat:
            Heartbeat(settings, "node-b-1").beat()
        return claimed.work_path, claimed.owner
    finally:
        owner_mod.pretend_host(None)


def _age_heartbeat(settings: Settings, seconds: float) -> None:
    path = heartbeat_path(settings, "node-b-1")
    data = json.loads(path.read_text())
    data["heartbeat"] -= seconds
    path.write_text(json.dumps(data))


def test_remote_claim_kept_while_its_heartbeat_is_fresh_then_recovered(settings: Settings) -> None:
    work, remote = _claim_as_remote(settings, "r1.yaml")
    assert remote.host == "node-b" and not owner_mod.is_local(remote, owner_mod.current_owner())
    assert recover(settings) == [] and work.exists()
    _age_heartbeat(settings, 9)
    assert recover(settings) == [] and work.exists()  # 9 s < peer_timeout_s
    _age_heartbeat(settings, 2)
    (taken,) = recover(settings)
    assert taken.source_name == "r1.yaml" and not work.exists() and taken.work_path.exists()
    assert taken.owner == owner_mod.current_owner()


def test_stopped_heartbeat_frees_the_claims_at_once(settings: Settings) -> None:
    work, _ = _claim_as_remote(settings, "r2.yaml")
    owner_mod.pretend_host("node-b")
    Heartbeat(settings, "node-b-1").stopped()
    owner_mod.pretend_host(None)
    (taken,) = recover(settings)
    assert taken.source_name == "r2.yaml"


def test_remote_owner_without_heartbeat_gets_the_timeout_from_its_claim(settings: Settings) -> None:
    _, remote = _claim_as_remote(settings, "r3.yaml", beat=False)
    peers = Peers(settings)
    assert peers.alive(remote, since=time.time() - 1)
    assert not peers.alive(remote, since=time.time() - 11)
    assert not peers.alive(remote, since=None)


def test_local_owner_judged_by_proc_not_by_heartbeat(settings: Settings) -> None:
    me = owner_mod.current_owner()
    peers = Peers(settings)
    assert peers.heartbeats == [] and peers.alive(me, since=0)  # no heartbeat, long ago: still alive
    dead = owner_mod.Owner(
        host=me.host, pid=2**22 + 12345, start_ticks=None, boot_id=me.boot_id, pid_ns=me.pid_ns
    )
    assert not peers.alive(dead, since=time.time())


def test_long_stale_heartbeats_are_forgotten(settings: Settings) -> None:
    _claim_as_remote(settings, "r4.yaml")
    _age_heartbeat(settings, 10 * 10 + 1)
    recover(settings)
    assert not heartbeat_path(settings, "node-b-1").exists()
