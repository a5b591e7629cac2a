"""Running the app: checks of the address and token, the listening socket, uvicorn until Ctrl-C."""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from dataclasses import dataclass

from personalive_cli.errors import UserError

log = logging.getLogger(__name__)
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~-]{8,256}")


@dataclass
class Listen:
    host: str = "127.0.0.1"
    port: int = 7860
    token: str | None = None
    no_auth: bool = False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(listen: Listen) -> None:
    """Refuse an exposed server without a token (or an explicit ``--no-auth``), and a token that would not
    survive a URL or a cookie."""
    if listen.token is not None and listen.no_auth:
        raise UserError("--token and --no-auth contradict each other; pass one")
    if listen.token is not None and not TOKEN_PATTERN.fullmatch(listen.token):
        raise UserError("--token must be 8 to 256 characters of letters, digits, '.', '_', '~' or '-'")
    if not is_loopback(listen.host) and listen.token is None and not listen.no_auth:
        raise UserError(f"--host {listen.host} lets other machines reach the server: pass --token SECRET "
                        "(viewers open the address ending in ?token=SECRET), or --no-auth to allow anyone")
    if not 0 <= listen.port <= 65535:
        raise UserError(f"--port must be 0 to 65535, got {listen.port}")


def bind(listen: Listen) -> socket.socket:
    """The listening socket, bound here so a taken port is one clear error before any model loads."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((listen.host, listen.port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {listen.host}:{listen.port}: {exc.strerror or exc}") from None
    sock.listen(64)
    return sock


def run_server(app, sock: socket.socket) -> None:
    """Serve until SIGINT/SIGTERM: uvicorn stops accepting, closes the viewers' connections (within a few
    seconds) and runs the app's shutdown, which ends every session."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", ws_max_size=4 << 20, timeout_graceful_shutdown=3,
                            lifespan="on")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the signal once it has shut down: by then the stop was clean
