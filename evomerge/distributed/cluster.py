"""Connecting to Ray (the one place that does: :func:`connect`, :func:`ray_session`,
:func:`release`) and deciding how many population actors run where.

``plan_actors`` is a pure function of the config and the cluster's resources, so the checks
that refuse impossible requests (more GPUs than exist, more CPU slots than exist) are tested
without Ray and run before any work starts.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from evomerge.config import RayConfig
from evomerge.errors import ClusterError, ConfigError


@dataclass(frozen=True)
class ActorPlan:
    """How many population actors to start and what each one reserves."""

    n_actors: int
    num_cpus: float
    num_gpus: float

    def bundles(self) -> list[dict[str, float]]:
        bundle = {"CPU": self.num_cpus}
        if self.num_gpus > 0:
            bundle["GPU"] = self.num_gpus
        return [dict(bundle) for _ in range(self.n_actors)]


def plan_actors(cfg: RayConfig, resources: Mapping[str, float]) -> ActorPlan:
    """Actor count and resources for ``cfg`` on a cluster offering ``resources``.

    One actor per GPU (``gpus_per_actor`` 1, or a fraction to share a GPU) when the cluster has
    GPUs; CPU actors (``cpus_per_actor`` each) otherwise. Raises :class:`ConfigError` when the
    request cannot be met, rather than leaving actors pending forever.
    """
    total_gpus = float(resources.get("GPU", 0.0))
    total_cpus = float(resources.get("CPU", 0.0))
    gpus = cfg.gpus_per_actor if cfg.gpus_per_actor is not None else (1.0 if total_gpus > 0 else 0.0)
    cpus = cfg.cpus_per_actor
    if gpus > 0:
        if total_gpus <= 0:
            raise ConfigError(
                f"`ray.gpus_per_actor` is {gpus:g} but the Ray cluster has no GPUs; "
                "set it to 0 to run CPU actors"
            )
        fit = math.floor(total_gpus / gpus + 1e-9)
        n = cfg.num_actors or fit
        if n * gpus > total_gpus + 1e-9:
            raise ConfigError(
                f"`ray.num_actors` x `ray.gpus_per_actor` = {n} x {gpus:g} = {n * gpus:g} GPUs requested, "
                f"but the Ray cluster has {total_gpus:g} GPU(s)"
            )
    else:
        fit = math.floor(total_cpus / cpus + 1e-9)
        if fit < 1:
            raise ConfigError(
                f"`ray.cpus_per_actor` is {cpus:g} but the Ray cluster has {total_cpus:g} CPU(s)"
            )
        n = cfg.num_actors or fit
    if n * cpus > total_cpus + 1e-9:
        raise ConfigError(
            f"`ray.num_actors` x `ray.cpus_per_actor` = {n} x {cpus:g} = {n * cpus:g} CPUs requested, "
            f"but the Ray cluster has {total_cpus:g} CPU(s)"
        )
    return ActorPlan(n_actors=int(n), num_cpus=float(cpus), num_gpus=float(gpus))


def connect(cfg: RayConfig, *, log_to_driver: bool = False) -> bool:
    """Join the cluster at ``cfg.address`` (else ``$RAY_ADDRESS``, which Ray Jobs set) or start a
    local Ray; reuse one already running.

    An address is probed first, so an unreachable head fails within ``cfg.connect_timeout_s``
    with one clear line instead of Ray's minutes of retries. Returns True when this call
    started Ray (the caller then stops it with :func:`disconnect`, or uses :func:`ray_session`).
    """
    import ray

    if ray.is_initialized():
        return False
    with _own_sigterm():
        try:
            return _start(cfg, log_to_driver)
        except BaseException:
            # an interrupt (or a failure) midway: stop what the start had already started (a
            # local GCS, raylet and agents would outlive the caller); joining, it disconnects
            ray.shutdown()
            raise


@contextlib.contextmanager
def _own_sigterm() -> Iterator[None]:
    """Keep the caller's SIGTERM handler: ``ray.init`` replaces it with ``sys.exit(15)``, which
    would bypass the CLI's cleanup and exit code 143 (evomerge.interrupts.stop_on_signals). A
    handler of the caller's own stays in place during the start too (a SIGTERM then raises
    where the caller expects it, instead of a SystemExit that a finalizer may swallow); with
    Python's default, Ray's stands in while it starts, and the default comes back after."""
    import signal

    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    keep = None
    if callable(before):
        try:
            from ray._private import utils

            keep = utils.set_sigterm_handler
            utils.set_sigterm_handler = lambda handler: None
        except (ImportError, AttributeError):  # another Ray layout: its handler, restored below
            keep = None
    try:
        yield
    finally:
        if keep is not None:
            utils.set_sigterm_handler = keep
        if before is not None:
            signal.signal(signal.SIGTERM, before)


def _start(cfg: RayConfig, log_to_driver: bool) -> bool:
    import ray

    address = target_address(cfg)
    if address:
        probe_address(address, cfg.connect_timeout_s)
        try:
            with _ray_processes_in_own_session():  # `local` starts one; joining a cluster starts none
                ray.init(address=address, log_to_driver=log_to_driver)
        except (ConnectionError, RuntimeError) as err:
            raise ConfigError(f"`ray.address`: cannot connect to Ray at {address!r} ({_first_line(err)})") from None
    else:
        # "local": a new Ray of our own, even if a `ray start` cluster runs on this machine
        try:
            with _ray_processes_in_own_session():
                ray.init(address="local", include_dashboard=False, log_to_driver=log_to_driver)
        except Exception as err:  # noqa: BLE001 - Ray raises a bare Exception on a startup timeout
            if ray.is_initialized():
                ray.shutdown()
            raise ClusterError(
                f"could not start a local Ray ({_first_line(err)}); on an overloaded machine give it "
                "longer with RAY_raylet_start_wait_time_s=180, or join a running cluster with `ray.address`"
            ) from None
    return True


@contextlib.contextmanager
def _ray_processes_in_own_session() -> Iterator[None]:
    """Start the local Ray's processes (GCS, raylet, their workers) in a session of their own.

    A signal sent to the driver's process group (``timeout``'s, or a scheduler's SIGTERM to the
    job) then reaches the driver only, which stops Ray itself as it unwinds. With Ray in the
    driver's group the signal killed Ray first, and the driver's cleanup then waited a minute
    for a GCS that was gone (exit 1, no resume line). Ray still ends with the driver: it ties
    each process to it through the kernel (PR_SET_PDEATHSIG). Only where Ray does so is the
    session changed: its fallback, a reaper, needs the processes in the driver's group."""
    try:
        from ray._private import services, utils

        base = services.ConsolePopen
        kernel_fate_share = utils.detect_fate_sharing_support()
    except (ImportError, AttributeError):  # another Ray layout: leave its processes as they are
        yield
        return
    if os.name != "posix" or not kernel_fate_share:
        yield
        return

    class OwnSession(base):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("start_new_session", True)
            super().__init__(*args, **kwargs)

    services.ConsolePopen = OwnSession
    try:
        yield
    finally:
        services.ConsolePopen = base


def target_address(cfg: RayConfig) -> str | None:
    """``cfg.address``, else ``$RAY_ADDRESS`` unless that names the job API (``http://...``, as
    exported for ``ray job submit``), else None (start a local Ray)."""
    env = os.environ.get("RAY_ADDRESS", "")
    return cfg.address or (env if env and not env.startswith(("http://", "https://")) else None)


def disconnect(started_ray: bool) -> None:
    """Stop Ray when this process started it (``connect`` returned True); else leave it running."""
    if started_ray:
        import ray

        ray.shutdown()


@contextlib.contextmanager
def ray_session(cfg: RayConfig, *, log_to_driver: bool = False) -> Iterator[bool]:
    """``with ray_session(cfg.ray):`` connect (see :func:`connect`) and release on exit."""
    started = connect(cfg, log_to_driver=log_to_driver)
    try:
        yield started
    finally:
        disconnect(started)


DEFAULT_CONNECT_TIMEOUT_S = 15.0


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a GCS (``host:port``) or Ray Client (``ray://host[:port]``) address;
    None for ``auto``/``local`` (Ray resolves those itself, quickly)."""
    if address in ("auto", "local"):
        return None
    rest, default_port = address, 6379
    if "://" in address:
        scheme, rest = address.split("://", 1)
        if scheme != "ray":
            raise ConfigError(
                f"`ray.address` {address!r}: use host:port (the head's GCS port, 6379 by default), "
                "ray://host:10001 or 'auto'; an http:// address is the job API, for `ray job submit` only"
            )
        default_port = 10001
    rest = rest.split("/", 1)[0]
    if rest.startswith("["):  # [IPv6]:port
        host, _, port = rest[1:].partition("]")
        port = port.lstrip(":")
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    else:
        host, port = rest, ""
    try:
        return host, int(port) if port else default_port
    except ValueError:
        raise ConfigError(f"`ray.address` {address!r}: {port!r} is not a port number") from None


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + empty SETTINGS


def probe_address(address: str, timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> None:
    """Raise :class:`ConfigError` unless a Ray head answers at ``address`` within ``timeout_s``.

    Quiet socket checks first: a TCP connection (refused, unroutable or silent hosts fail
    here), then the HTTP/2 preface every gRPC server (GCS, Ray client) answers with a SETTINGS
    frame at once (a port that accepts but never speaks fails here). Last, for a GCS address,
    Ray's own GCS handshake, run in a daemon thread and abandoned after the time left."""
    hp = _host_port(address)
    if hp is None:
        return
    host, port = hp
    deadline = time.monotonic() + timeout_s
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            sock.sendall(_H2_PREFACE)
            try:
                frame = sock.recv(9)
            except TimeoutError:
                raise ConfigError(
                    f"`ray.address`: {host}:{port} accepts connections but did not answer within {timeout_s:g} s "
                    "(is this the head's GCS port, 6379 by default?)"
                ) from None
    except OSError as err:
        reason = f"no answer within {timeout_s:g} s" if isinstance(err, TimeoutError) else (
            (err.strerror or type(err).__name__).lower())
        raise ConfigError(
            f"`ray.address`: no Ray head at {address!r} ({host}:{port}: {reason}); "
            "is the head running, and is the port open from this machine?"
        ) from None
    if len(frame) < 9 or frame[3] != 4:  # frame type 4: SETTINGS
        raise ConfigError(f"`ray.address`: {host}:{port} is not a Ray head (it does not speak gRPC)")
    if address.startswith("ray://"):
        return
    result: list[BaseException | None] = []

    def handshake() -> None:
        try:
            from ray._raylet import GcsClient

            GcsClient(address=f"{host}:{port}", cluster_id=None)
            result.append(None)
        except BaseException as e:  # noqa: BLE001 - reported below
            result.append(e)

    thread = threading.Thread(target=handshake, name="evomerge-ray-probe", daemon=True)
    thread.start()
    thread.join(max(0.5, deadline - time.monotonic()))
    if not result:
        raise ConfigError(f"`ray.address`: {host}:{port} speaks gRPC but no Ray GCS answered within {timeout_s:g} s")
    if result[0] is not None:
        raise ConfigError(f"`ray.address`: {host}:{port} is not a reachable Ray GCS ({_first_line(result[0])})")


def create_placement_group(plan: ActorPlan, timeout_s: float):
    """A SPREAD placement group with one bundle per actor, so actors land on distinct nodes
    where possible (one per GPU node on a GPU cluster)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    pg = placement_group(plan.bundles(), strategy="SPREAD")
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise ConfigError(
            f"could not place {plan.n_actors} actor(s) with {plan.bundles()[0]} each within "
            f"{timeout_s:g} s (`ray.placement_timeout_s`); the cluster offers {ray.available_resources()}"
        ) from None
    return pg


def actor_options(plan: ActorPlan, pg: Any, index: int, max_restarts: int) -> dict[str, Any]:
    """``.options(...)`` for actor ``index``: its bundle, and Ray-side restarts.

    Task retries stay off: a restarted actor has lost its individuals, so the coordinator
    restores them before it re-sends the work (see :mod:`evomerge.distributed.pool`).
    """
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {
        "num_cpus": plan.num_cpus,
        "num_gpus": plan.num_gpus,
        "max_restarts": max_restarts,
        "max_task_retries": 0,
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=index
        ),
    }


def cluster_resources() -> dict[str, float]:
    import ray

    return dict(ray.cluster_resources())


def kill_actors(actors) -> None:
    """Kill ``actors`` without restarts; actors already gone are skipped."""
    import ray

    for a in actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:  # already gone
            pass


def release(actors, pg, started_ray: bool) -> None:
    """Kill ``actors`` (no restarts), remove the placement group ``pg`` (if any), and stop Ray
    when the caller started it. Actors already gone are skipped."""
    kill_actors(actors)
    if pg is not None:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(pg)
    disconnect(started_ray)
