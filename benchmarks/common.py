"""What several benchmarks need: a free local port, a small JSON request to a fake server's control
endpoint, and writing a result as JSON and Markdown. Standard library only, so that every benchmark
still runs on a bare machine with the repository on its path."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str, body: dict[str, Any] | None = None) -> Any:
    """GET (or POST `body`) a local control endpoint and decode its JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


def write_results(doc: dict[str, Any], out: str | Path, write_markdown: Callable[[dict[str, Any], Path], None]) -> None:
    """`out`.json and `out`.md (the folder made if needed), then the Markdown printed."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    write_markdown(doc, path.with_suffix(".md"))
    print(path.with_suffix(".md").read_text())
