"""`bllama serve`: the OpenAI-compatible server over one Runtime: uvicorn (HTTP/1.1, asyncio) running the Starlette
app of app.py, behind guard.py's limits, with one engine thread (scheduler.py / continuous.py).

    server = Server(runtime, ("127.0.0.1", 0), "my-model")   # binds now: server.url is known
    threading.Thread(target=server.serve_forever).start()
    ...
    server.shutdown(); server.server_close()                   # stop listening; end the engine thread

Requests the engine cannot honour get a 4xx JSON error that names the problem, never a silently different answer;
docs/security.md lists every limit and what is trusted.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
from pathlib import Path
from typing import Iterable, Optional, Tuple

import uvicorn

from .app import ServeApp
from .guard import Guard, guarded_protocol
from .limits import MAX_HEADER_BYTES, ServeLimits
from .metrics import Metrics
from .scheduler import StaticScheduler

API_KEY_ENV = "BLLAMA_API_KEY"


def make_scheduler(runtime, kind: str, metrics: Metrics, limits: ServeLimits, batch_wait_s: float = 0.01,
                   step_tokens: Optional[int] = None, poll_s: float = 0.0):
    """kind: "static" (batches that run to their end), "continuous" (slots; needs Runtime.slots()) or "auto"
    (continuous where the runtime has slots). step_tokens: continuous only, rows per engine step (Slots.step_tokens;
    None: the engine's default). poll_s: how long an idle engine thread spins for the next request before it
    sleeps (0: it sleeps at once; SchedulerBase)."""
    if kind == "auto":
        kind = "continuous" if callable(getattr(runtime, "slots", None)) else "static"
    if kind == "continuous":
        from .continuous import ContinuousScheduler

        return ContinuousScheduler(runtime, metrics, limits.max_queue, step_tokens, poll_s).start()
    if kind != "static":
        raise ValueError(f"unknown scheduler {kind!r} (static, continuous or auto)")
    return StaticScheduler(runtime, metrics, limits.max_queue, batch_wait_s, poll_s).start()


class _Uvicorn(uvicorn.Server):
    """Ends the engine's work first when told to stop (Ctrl-C), so that running replies end instead of being
    waited for."""

    def __init__(self, config, on_exit):
        super().__init__(config)
        self._on_exit = on_exit

    async def shutdown(self, sockets=None):
        self._on_exit()
        await super().shutdown(sockets)


class Server:
    """An HTTP server bound to one Runtime; `model_id` is the name /v1/models reports and replies carry.
    default_max_tokens: the most new tokens of a request that sets no max_tokens (fewer if the context is fuller).
    api_key: required as a Bearer token on every endpoint but /health. allowed_hosts: Host names accepted beside
    the bound address and localhost. cors_origins: origins whose browsers may call the API. poll_s: seconds an idle
    engine thread keeps its core awake waiting for the next request (0: none; `bllama serve --poll`)."""

    def __init__(self, runtime, address: Tuple[str, int], model_id: str, default_max_tokens: int = 256,
                 quiet: bool = False, client_timeout: Optional[float] = None, batch_wait_s: float = 0.01,
                 limits: Optional[ServeLimits] = None, api_key: Optional[str] = None,
                 allowed_hosts: Iterable[str] = (), cors_origins: Iterable[str] = (), scheduler: str = "auto",
                 step_tokens: Optional[int] = None, poll_s: float = 0.0):
        if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
            raise ValueError(f"the API key is empty ({api_key!r}): give one, or None to serve without a key")
        limits = limits or ServeLimits()
        if client_timeout is not None:
            from dataclasses import replace

            limits = replace(limits, client_timeout_s=client_timeout)
        self.runtime, self.model_id, self.limits = runtime, model_id, limits
        host, port = address[:2]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((host, port))
            self.socket.listen(2048)
        except OSError:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()
        self.metrics = Metrics()
        try:
            self.scheduler = make_scheduler(runtime, scheduler, self.metrics, limits, batch_wait_s, step_tokens, poll_s)
        except Exception:
            self.socket.close()
            raise
        self.app = ServeApp(runtime, self.scheduler, self.metrics, model_id, default_max_tokens, limits)
        asgi = self.app.app
        cors_origins = list(cors_origins)
        if cors_origins:
            from starlette.middleware.cors import CORSMiddleware

            asgi = CORSMiddleware(asgi, allow_origins=cors_origins, allow_methods=["GET", "POST"],
                                  allow_headers=["authorization", "content-type"])
        asgi = Guard(asgi, host, api_key, allowed_hosts, cors_origins, self.metrics)
        config = uvicorn.Config(asgi, http=guarded_protocol(limits, self.metrics), lifespan="off", access_log=not quiet,
                                log_level="critical" if quiet else "info", timeout_keep_alive=limits.keep_alive_s,
                                timeout_graceful_shutdown=limits.client_timeout_s, server_header=False,
                                h11_max_incomplete_event_size=MAX_HEADER_BYTES)
        self._uvicorn = _Uvicorn(config, self.scheduler.close)
        self._served = threading.Event()

    # The names of socketserver's servers, which the tests and the benchmark have always used.
    def serve_forever(self) -> None:
        try:
            self._uvicorn.run(sockets=[self.socket])
        finally:
            self._served.set()

    def shutdown(self) -> None:
        """Stops accepting connections (replies under way go on until server_close)."""
        self._uvicorn.should_exit = True

    def server_close(self) -> None:
        """Ends the engine thread (waiting requests get a 503, running ones end at their next token), then waits
        for the HTTP side to finish."""
        self._uvicorn.should_exit = True
        self.scheduler.close()
        if self._uvicorn.started:
            self._served.wait(timeout=60)
        self.socket.close()

    @property
    def batch_sizes(self):
        return getattr(self.scheduler, "batch_sizes", None)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(runtime, host: str = "127.0.0.1", port: int = 8080, model_id: Optional[str] = None,
          default_max_tokens: int = 256, api_key: Optional[str] = None, **options) -> None:
    """Serves `runtime` until interrupted (Ctrl-C). api_key: None reads $BLLAMA_API_KEY."""
    if api_key is None:
        api_key = os.environ.get(API_KEY_ENV)
        if api_key is not None and not api_key.strip():  # `export BLLAMA_API_KEY=$UNSET_VARIABLE`: not "no key"
            raise ValueError(f"${API_KEY_ENV} is set but empty: give it a key, or unset it to serve without one")
    elif not api_key.strip():  # `--api-key "$UNSET_VARIABLE"` used to serve with no key at all
        raise ValueError("--api-key is empty: give a key, or leave it out to serve without one")
    if not api_key and not is_loopback(host):
        print(f"warning: listening on {host or 'every address'} without an API key: anyone who can reach this "
              f"port can use the model (set --api-key or ${API_KEY_ENV}; see docs/security.md)", file=sys.stderr,
              flush=True)
    try:
        server = Server(runtime, (host, port), model_id or Path(runtime.path).stem, default_max_tokens,
                        api_key=api_key, **options)
    except OSError as e:  # the port is taken, the address is not this machine's, ...
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    poll_s = server.scheduler.poll_s
    polling = f", the idle engine thread spins up to {poll_s:g} s for the next request" if poll_s else ""
    print(f"serving {runtime.path} as '{server.model_id}' at {server.url} ({server.scheduler.kind} batching, "
          f"{server.scheduler.capacity} slot{'s' if server.scheduler.capacity != 1 else ''}{', API key required' if api_key else ''}{polling}; OpenAI-compatible: "
          f"POST /v1/completions, POST /v1/chat/completions; GET /v1/models[/{{id}}], /health, /metrics)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        print("stopped", flush=True)
