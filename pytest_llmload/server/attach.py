"""An OpenAI-compatible server someone else runs: attached by URL, never started or stopped here."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import httpx

from ..control import Control, model_ids
from ..errors import ConfigError, ServerStartError
from .install import VllmInstall


class AttachedServer:
    """An OpenAI-compatible server someone else runs: same attributes as VLLMServer, no process of ours."""

    log_path: Path | None = None
    pid: int | None = None
    startup_s: float | None = None
    install: VllmInstall | None = None  # someone else's server: its install is not ours to read

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 timeout_s: float = 10.0) -> None:
        self.argv: list[str] = []  # we did not launch it
        self._control = Control(base_url, api_key, timeout_s=timeout_s)
        self.base_url = self._control.base_url
        self.port = urllib.parse.urlsplit(self.base_url).port
        self.api_key = api_key
        try:
            self.model: str = self._served_model(model)
        except BaseException:
            self._control.close()
            raise

    def _served_model(self, model: str | None) -> str:
        ids = self._list_models()
        if model is not None and ids and model not in ids:
            raise ConfigError(f"model {model!r} is not served at {self.base_url}; it serves: {', '.join(ids)}")
        if model is None and not ids:
            raise ConfigError(f"{self.base_url}/v1/models lists no model; pass the model name")
        return model if model is not None else ids[0]

    def _list_models(self) -> list[str]:
        url = f"{self.base_url}/v1/models"
        try:
            response = self._control.get("/v1/models")
        except httpx.HTTPError as exc:
            raise ServerStartError(f"no server answered at {url} ({exc}); is it running?") from exc
        if response.status_code != 200:
            raise ServerStartError(f"{url} answered HTTP {response.status_code}: {response.text[:200]!r}")
        try:
            return model_ids(response.json())
        except ValueError:
            raise ServerStartError(f"{url} did not answer JSON: {response.text[:200]!r}") from None

    def returncode(self) -> int | None:
        """Always None: we do not own the process."""
        return None

    def log_tail(self, lines: int = 40) -> str:
        """Always empty: we have no log."""
        return ""

    def tree_pids(self) -> list[int]:
        """Always empty: the processes are not ours (they may be on another host)."""
        return []

    def version(self) -> str | None:
        """The server's /version if it has one (vLLM does), else None."""
        return self._control.version()

    def stop(self) -> None:
        """Nothing to stop; closes our HTTP client."""
        self._control.close()

    def __enter__(self) -> AttachedServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
