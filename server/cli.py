"""`wondercraft serve`: check the host, open the state, listen, serve until a signal."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import secrets
import signal
import socket
import sys
from dataclasses import asdict
from pathlib import Path

from . import VERSION, jsonlog
from .config import Settings, load_settings
from .errors import ConfigError, StartupRefused
from .notify import Notifier

log = logging.getLogger("wondercraft")

CAP_SYS_ADMIN = 21


def _has_cap_sys_admin() -> bool:
    import prctl

    return bool(prctl.cap_effective.sys_admin)


def check_privileges() -> None:
    if os.geteuid() != 0:
        raise StartupRefused(f"must run as root (effective uid is {os.geteuid()}); sandboxes need root")
    if not _has_cap_sys_admin():
        raise StartupRefused("CAP_SYS_ADMIN is missing from the effective capability set; sandboxes need it")


def prepare_state_dir(state_dir: Path) -> None:
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupRefused(f"state dir {state_dir} cannot be created: {exc.strerror}") from None
    if not state_dir.is_dir():
        raise StartupRefused(f"state dir {state_dir} is not a directory")
    probe = state_dir / f".write-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"ok")
            os.fsync(handle.fileno())
        probe.unlink()
    except OSError as exc:
        raise StartupRefused(f"state dir {state_dir} is not writable: {exc.strerror}") from None


def bind_listener(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupRefused(f"cannot resolve listen address {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupRefused(f"port {port} on {host} is already in use") from None
        raise StartupRefused(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def load_admin_token(settings: Settings, state_dir: Path) -> tuple[str, str]:
    """The token and where it came from: the environment, or STATE/admin.token (made once, 0600)."""
    if settings.admin_token:
        return settings.admin_token, "WONDERCRAFT_ADMIN_TOKEN"
    path = state_dir / "admin.token"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise StartupRefused(
                f"admin token file {path} has mode {mode:04o}; it must not be readable by others (chmod 600 {path})"
            ) from None
        token = path.read_text().strip()
        if len(token) < 16:
            raise StartupRefused(
                f"admin token file {path} is empty or too short; delete it to make a new one"
            ) from None
        return token, str(path)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return token, str(path)


SERVICE_FILE = "service.json"


def service_url(host: str, port: int) -> str:
    """The URL a local client reaches a listener on: a wildcard address is reached on loopback."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def write_service_file(state_dir: Path, host: str, port: int) -> Path:
    """STATE/service.json (0644): where this service listens, so `wondercraft-ctl` finds a local
    service on any port. Written atomically once the port answers; removed at stop."""
    path = state_dir / SERVICE_FILE
    partial = state_dir / f".{SERVICE_FILE}.partial"
    record = {
        "url": service_url(host, port),
        "host": host,
        "port": port,
        "pid": os.getpid(),
        "version": VERSION,
    }
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o644)  # whatever the umask: the file holds no secret
        json.dump(record, handle)
    os.replace(partial, path)
    return path


def remove_service_file(state_dir: Path) -> None:
    """Removes STATE/service.json if it is this process's (a newer service may have replaced it)."""
    path = state_dir / SERVICE_FILE
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def _compile_kernels() -> None:
    from aggregation.warmup import compile_kernels

    figures = compile_kernels()
    log.info("aggregation kernels ready", extra={"seconds": figures["seconds"]})


async def _serve(
    settings: Settings, store, listener: socket.socket, admin_token: str, notifier: Notifier
) -> None:
    from aiohttp import web

    from .app import create_app

    app = create_app(settings, store, admin_token=admin_token)
    state_dir = Path(store.path).resolve().parent
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    # Installed before start-up recovery, so a stop asked for during it is a clean stop too.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    notifier.status("start-up recovery: sweeping orphans, re-queuing interrupted cycles")
    # No round waits on numba: the kernels compile (or load from its cache) beside recovery.
    kernels = (
        asyncio.create_task(asyncio.to_thread(_compile_kernels)) if settings.aggregation_precompile else None
    )
    try:
        await runner.setup()
        if kernels is not None:
            notifier.status("compiling aggregation kernels")
            await kernels
    except Exception as exc:
        log.exception("start-up failed")
        await runner.cleanup()
        await notifier.close()
        raise StartupRefused(f"start-up recovery failed: {exc}") from None
    if not stop.is_set():
        site = web.SockSite(runner, listener)
        await site.start()
        host, port = listener.getsockname()[:2]
        write_service_file(state_dir, host, port)
        log.info("listening", extra={"host": host, "port": port, "version": VERSION})
        # Recovery has finished and the port answers: only now may systemd start dependents.
        notifier.ready(f"serving on {host}:{port}")
        notifier.start_watchdog()
        await stop.wait()
    log.info("stopping", extra={"grace_s": settings.shutdown_grace_s})
    notifier.stopping(
        f"stopping: running cycles get up to {settings.shutdown_grace_s:g}s, then their sandboxes are killed"
    )
    remove_service_file(state_dir)
    await runner.cleanup()
    await notifier.close()
    log.info("stopped")


def settings_summary(settings: Settings) -> dict:
    """The effective settings, token hidden: logged at start-up and printed by `config`."""
    summary = asdict(settings)
    summary["admin_token"] = "(set)" if settings.admin_token else None
    return summary


def show_config(args: argparse.Namespace) -> int:
    settings = load_settings(Path(args.config) if args.config else None)
    print(json.dumps(settings_summary(settings), indent=2, sort_keys=True))
    return 0


def serve(args: argparse.Namespace) -> int:
    notifier = Notifier.from_environment()
    jsonlog.configure(args.log_level)
    settings = load_settings(Path(args.config) if args.config else None)
    log.info("settings", extra={"settings": settings_summary(settings)})
    check_privileges()
    state_dir = Path(args.state_dir).resolve()
    prepare_state_dir(state_dir)
    listener = bind_listener(args.host, args.port)
    try:
        from .store import Store

        store = Store(state_dir / "wondercraft.db")
        admin_token, token_source = load_admin_token(settings, state_dir)
        log.info("admin token", extra={"source": token_source, "state_dir": str(state_dir)})
        try:
            asyncio.run(_serve(settings, store, listener, admin_token, notifier))
        finally:
            store.close()
    finally:
        listener.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wondercraft", description="WonderCraft sandbox and training service"
    )
    parser.add_argument("--version", action="version", version=f"wondercraft {VERSION}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run the service")
    run.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=3000, help="listen port (default 3000)")
    run.add_argument(
        "--state-dir", default="./var", help="where SQLite state, models and the admin token live"
    )
    run.add_argument("--config", help="scaling JSON (maxConcurrentTrainingCycles, resourceLimits, ...)")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(func=serve)
    config = commands.add_parser(
        "config", help="print the effective settings (defaults < --config < environment)"
    )
    config.add_argument("--config", help="scaling JSON to merge")
    config.set_defaults(func=show_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"wondercraft: configuration error: {exc.message}", file=sys.stderr)
        return 2
    except StartupRefused as exc:
        print(f"wondercraft: cannot start: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
