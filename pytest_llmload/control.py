"""Control requests to the server (health, model list, version, `/metrics`, `/tokenize`) and the one
normaliser of server URLs.

Measured traffic goes through `load/client.py` (raw asyncio, every chunk timestamped); everything
else is a small request that httpx does well. `trust_env=False` everywhere: a proxy from the
environment must never see (or intercept) traffic to a server on 127.0.0.1.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import httpx

from .errors import ConfigError


def normalize_base_url(url: str) -> str:
    """`url` as http(s)://host[:port][/prefix] without a trailing / or /v1; ConfigError if it is not one."""
    parts = urllib.parse.urlsplit(str(url).strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"server URL {url!r} must look like http://HOST:PORT")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ConfigError(f"server URL {url!r}: {exc}") from exc
    path = parts.path.rstrip("/").removesuffix("/v1")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The bearer header for `api_key` (none without a key)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class Control:
    """A synchronous httpx client bound to one server."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout_s: float = 5.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = normalize_base_url(base_url)
        self._client = httpx.Client(base_url=self.base_url, headers=auth_headers(api_key), timeout=timeout_s,
                                    trust_env=False, transport=transport)

    @property
    def timeout_s(self) -> float:
        return self._client.timeout.read or 5.0

    def get(self, path: str, *, timeout_s: float | None = None) -> httpx.Response:
        """GET `path`; httpx.HTTPError (a subclass of Exception) when the server cannot be reached."""
        return self._client.get(path, timeout=timeout_s if timeout_s is not None else httpx.USE_CLIENT_DEFAULT)

    def models(self, *, timeout_s: float | None = None) -> list[str]:
        """The ids `/v1/models` lists; raises httpx.HTTPError when unreachable, [] on a non-200 answer."""
        response = self.get("/v1/models", timeout_s=timeout_s)
        return model_ids(response.json()) if response.status_code == 200 else []

    def healthy(self, *, timeout_s: float | None = None) -> bool:
        """Whether `/health` answers 200 (False when it cannot be reached)."""
        try:
            return self.get("/health", timeout_s=timeout_s).status_code == 200
        except httpx.HTTPError:
            return False

    def version(self) -> str | None:
        """The server's `/version` (vLLM has one), None when it does not answer one."""
        try:
            response = self.get("/version")
            return str(response.json()["version"]) if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Control:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def async_client(base_url: str, api_key: str | None = None, *, timeout_s: float = 60.0,
                 max_connections: int = 32) -> httpx.AsyncClient:
    """An async client with the same settings (prompt sizing runs on the runner's event loop)."""
    return httpx.AsyncClient(base_url=normalize_base_url(base_url), headers=auth_headers(api_key),
                             timeout=httpx.Timeout(timeout_s), trust_env=False,
                             limits=httpx.Limits(max_connections=max_connections))


def model_ids(body: Any) -> list[str]:
    """The model ids of a `/v1/models` answer; [] for anything else."""
    try:
        return [str(m["id"]) for m in body["data"]]
    except (KeyError, TypeError):
        return []
