"""Joining a Ray head: an unreachable ``ray.address`` fails in seconds with one clear line
(Ray's own retries take about 13 minutes), and ``ray_session`` releases what it started."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from evomerge.config import config_from_dict
from evomerge.distributed.cluster import connect, ray_session
from evomerge.errors import ConfigError


def ray_cfg(address: str | None, timeout_s: float = 3.0):
    return config_from_dict({"ray": {"address": address, "connect_timeout_s": timeout_s}}).ray


def refused_address() -> str:
    with socket.socket() as s:  # a port nobody listens on once this socket is closed
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def check_one_line(err: ConfigError, address: str) -> None:
    msg = str(err)
    assert "\n" not in msg and msg.startswith("`ray.address`") and address in msg


def test_refused_port_fails_at_once() -> None:
    addr = refused_address()
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as err:
        connect(ray_cfg(addr))
    assert time.monotonic() - t0 < 5.0  # importing Ray included
    check_one_line(err.value, addr)
    assert "refused" in str(err.value)


def test_silent_port_fails_within_the_connect_timeout() -> None:
    """A port that accepts connections but never speaks (a firewall, a proxy, the wrong service)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(server.accept()[0])
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    addr = f"127.0.0.1:{server.getsockname()[1]}"
    try:
        t0 = time.monotonic()
        with pytest.raises(ConfigError) as err:
            connect(ray_cfg(addr, timeout_s=2.0))
        took = time.monotonic() - t0
    finally:
        stop.set()
        server.close()
        for c in conns:
            c.close()
    assert 1.5 <= took < 6.0, took
    check_one_line(err.value, addr.split(":")[0])
    assert "accepts connections but did not answer within 2 s" in str(err.value)


def test_unroutable_address_fails_within_the_connect_timeout() -> None:
    addr = "192.0.2.1:6379"  # TEST-NET-1 (RFC 5737): never a real host
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as err:
        connect(ray_cfg(addr, timeout_s=2.0))
    assert time.monotonic() - t0 < 6.0
    check_one_line(err.value, addr)


def test_ray_address_from_the_environment_is_probed_too(monkeypatch) -> None:
    """Ray Jobs set RAY_ADDRESS for their driver: a job joins the cluster it was submitted to."""
    addr = refused_address()
    monkeypatch.setenv("RAY_ADDRESS", addr)
    with pytest.raises(ConfigError) as err:
        connect(ray_cfg(None))
    check_one_line(err.value, addr)


def test_job_api_address_in_the_environment_is_not_a_ray_address(monkeypatch) -> None:
    """`export RAY_ADDRESS=http://HEAD:8265` is how Ray's job CLI is pointed at a head."""
    from evomerge.distributed.cluster import target_address

    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert target_address(ray_cfg(None)) is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert target_address(ray_cfg(None)) == "10.0.0.5:6379"
    assert target_address(ray_cfg("auto")) == "auto"


def test_http_address_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="job API"):
        connect(ray_cfg("http://127.0.0.1:8265"))


@pytest.mark.ray
@pytest.mark.slow  # 3-20 s to start a local Ray, with the machine's load
def test_ray_session_starts_and_releases_a_local_ray(monkeypatch) -> None:
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    with ray_session(ray_cfg(None)) as started:
        assert started and ray.is_initialized()
        with ray_session(ray_cfg(None)) as again:  # nested: reuses, does not stop it
            assert again is False
        assert ray.is_initialized()
    assert not ray.is_initialized()


def test_local_ray_that_fails_to_start_is_one_clear_error(monkeypatch) -> None:
    """Ray raises a bare Exception when its node times out at start-up (an overloaded machine);
    the user gets one ClusterError line with the remedy, not Ray's traceback."""
    import ray

    from evomerge.errors import ClusterError

    def fail(*args, **kwargs):
        raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "init", fail)
    with pytest.raises(ClusterError, match="could not start a local Ray .*timed out during startup.*RAY_raylet_start_wait_time_s"):
        connect(config_from_dict({}).ray)
