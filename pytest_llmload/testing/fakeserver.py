"""A small fake OpenAI-compatible streaming server: accurate timing at 1024 streams, fault injection.

It serves `/v1/completions` and `/v1/chat/completions` (streamed, SSE over chunked HTTP/1.1, the shape
vLLM sends: token chunks, a `finish_reason` chunk, a `usage` chunk, `data: [DONE]`), `/tokenize`,
`/detokenize`, `/v1/models`, `/health`, `/metrics`, and, for tests and the benchmark:

- `GET /fake/truth`: per request, server-side truth as `time.perf_counter()` values (same clock as the
  client on Linux: CLOCK_MONOTONIC): when the request was read, when each token chunk was written, when
  `[DONE]` was written; keyed by `sha1(prompt)[:16]`.
- `POST /fake/config` (JSON), or `FakeServer.configure(...)` in-process: change timing or faults.

Why a hand-written asyncio Protocol: a framework would add per-chunk overhead that shows up as server
jitter at 1024 streams. All streams share one timer heap; every tick writes every chunk that is due, so
the server stays on schedule when many streams are due at once.

The fake tokenizer cuts each whitespace-separated word into pieces of at most 4 characters (one token
each, with a BOS token in front when `add_special_tokens`), so prompt sizing has real work to do.

Run: `python -m pytest_llmload.testing.fakeserver --port 8000 --ttft-ms 100 --itl-ms 20`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import heapq
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, cast

# Fault modes; `http_NNN` for any status works too.
FAULTS = (
    "http_400", "http_404", "http_429", "http_500",  # JSON error body, no stream
    "malformed_sse",  # a `data:` line that is not JSON, after 3 tokens
    "no_done",  # the stream ends cleanly but without `data: [DONE]`
    "error_event",  # an in-band `{"error": ...}` event after 3 tokens, then [DONE]
    "hang",  # read the request, never answer
    "slow_first_byte",  # wait `slow_first_byte_ms` before the response headers
    "no_usage",  # no usage chunk
    "drop",  # close the connection after 3 tokens, mid-stream
)
TOKEN_TEXT = " tok"
_WORD = re.compile(r"\S+")
_BOS_ID = 1


@dataclass
class FakeConfig:
    """Timing and fault settings of a `FakeServer` (mutable at run time via `configure`)."""

    ttft_ms: float = 100.0
    itl_ms: float = 20.0  # 0: send every token at once (client ingest benchmark)
    model: str = "fake-model"
    max_model_len: int = 4096
    fault: str | None = None
    fault_every: int = 1  # apply `fault` to every k-th generation request (1: all of them)
    slow_first_byte_ms: float = 1000.0
    record_truth: bool = True
    other_traffic_tokens: int = 0  # /metrics counts this many more generated tokens per request: another client
    # Chat streams start with this many reasoning tokens (`reasoning_field` deltas, as vLLM's reasoning
    # parsers send them), then the answer; usage reports them as completion_tokens_details.reasoning_tokens.
    reasoning_tokens: int = 0
    reasoning_field: str = "reasoning_content"
    # A prefix cache in blocks of `block_tokens` prompt tokens (hashed like vLLM's: each block by its
    # whole prefix), counted in /metrics (vllm:prefix_cache_queries / hits) and in usage
    # (prompt_tokens_details.cached_tokens); `POST /reset_prefix_cache` empties it when `dev_mode`.
    prefix_cache: bool = False  # off by default: hashing every prompt costs time at 1024 streams
    block_tokens: int = 16
    dev_mode: bool = True
    prefill_ms_per_token: float = 0.0  # added to the TTFT for every prompt token not found in the cache


@dataclass
class Truth:
    """What the server did for one request, in `time.perf_counter()` seconds."""

    key: str
    recv: float
    sends: list[float] = field(default_factory=list)
    done: float | None = None
    prompt_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "recv": self.recv, "sends": self.sends, "done": self.done,
                "prompt_tokens": self.prompt_tokens}


def prompt_key(prompt: str) -> str:
    """The key `/fake/truth` files a request under: what a client can compute from its own prompt."""
    return hashlib.sha1(prompt.encode()).hexdigest()[:16]


class FakeTokenizer:
    """Words cut into pieces of <= 4 characters; ids assigned on first sight (stable per server)."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._pieces: list[str] = ["<unk>", "<s>"]

    def pieces(self, text: str) -> list[str]:
        out: list[str] = []
        for n, m in enumerate(_WORD.finditer(text)):
            w = m.group()
            for i in range(0, len(w), 4):
                out.append((" " if n and i == 0 else "") + w[i:i + 4])
        return out

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [_BOS_ID] if add_special_tokens else []
        for p in self.pieces(text):
            if p not in self._ids:
                self._ids[p] = len(self._pieces)
                self._pieces.append(p)
            ids.append(self._ids[p])
        return ids

    @staticmethod
    def count(text: str, add_special_tokens: bool = True) -> int:
        """len(encode(text)), without building ids: cheap enough for every generation request."""
        return add_special_tokens + sum((len(w) + 3) // 4 for w in text.split())

    def decode(self, ids: list[int]) -> str:
        return "".join(self._pieces[i] for i in ids if i != _BOS_ID and 0 < i < len(self._pieces))

    @staticmethod
    def chat_template(messages: list[dict[str, Any]]) -> str:
        body = " ".join(f"<|{m.get('role', 'user')}|> {m.get('content', '')}" for m in messages)
        return f"{body} <|assistant|>"


class _Stream:
    """One generation request being answered."""

    __slots__ = ("proto", "truth", "token_chunk", "last_chunk", "tail", "left", "next_due", "fault",
                 "reasoning_chunk", "reasoning_left")

    def __init__(self, proto: _HTTPServerProtocol, truth: Truth, chunks: tuple[bytes, bytes, bytes],
                 tokens: int, fault: str | None, reasoning: tuple[bytes, int] = (b"", 0)) -> None:
        self.proto = proto
        self.truth = truth
        self.token_chunk, self.last_chunk, self.tail = chunks
        self.left = tokens
        self.next_due = 0.0
        self.fault = fault
        self.reasoning_chunk, self.reasoning_left = reasoning  # the first tokens are reasoning


def _chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _sse(obj: Any) -> bytes:
    return _chunk(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")


_DONE = _chunk(b"data: [DONE]\n\n")
_END = b"0\r\n\r\n"
_STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests",
            500: "Internal Server Error", 503: "Service Unavailable"}


def _response(status: int, body: bytes, ctype: str = "application/json") -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\ncontent-type: {ctype}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode() + body


def _error_body(status: int, message: str) -> bytes:
    kind = {400: "BadRequestError", 404: "NotFoundError", 429: "RateLimitError"}.get(status, "InternalServerError")
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()


class FakeServer:
    """The fake server. In-process: `with FakeServer(FakeConfig(...)) as srv: srv.base_url`."""

    def __init__(self, config: FakeConfig | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or FakeConfig()
        self.host = host
        self.port = port
        self.tokenizer = FakeTokenizer()
        self.truth: list[Truth] = []
        self.requests_seen = 0  # generation requests, for `fault_every`
        self.running = 0
        self.counters = {"prompt_tokens": 0, "generation_tokens": 0, "success": 0, "prefix_cache_queries": 0,
                         "prefix_cache_hits": 0}
        self.cached_blocks: set[str] = set()
        self._heap: list[tuple[float, int, _Stream]] = []
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._protocols: set[_HTTPServerProtocol] = set()
        self._chunk_cache: dict[tuple[bool, str], tuple[tuple[bytes, bytes, bytes], dict[str, Any]]] = {}

    # ---- life cycle -------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start_async(self) -> None:
        """Bind and serve on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: _HTTPServerProtocol(self), self.host, self.port, backlog=4096, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop_async(self) -> None:
        """Stop listening and drop every open connection."""
        if self._server is not None:
            self._server.close()
        for p in list(self._protocols):
            if p.transport is not None:
                p.transport.abort()
        if self._timer is not None:
            self._timer.cancel()

    def start(self) -> FakeServer:
        """Serve from a daemon thread with its own event loop; returns once the port is bound."""
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as e:  # noqa: BLE001 - handed to the starting thread
                errors.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop_async())
            loop.close()

        self._thread = threading.Thread(target=run, name="llmload-fakeserver", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake server did not start within 10 s")
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        """Stop the thread started by `start`."""
        if self._thread is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def configure(self, **changes: Any) -> None:
        """Change settings (`FakeConfig` field names); safe from any thread."""
        self.config = replace(self.config, **changes)

    def reset_truth(self) -> None:
        self.truth = []

    def lookup_prefix(self, ids: list[int]) -> int:
        """Prompt tokens found in the prefix cache (whole blocks, from the start), counted in /metrics;
        the prompt's blocks are cached from now on. As in vLLM, the last token is always computed."""
        if not self.config.prefix_cache:
            return 0
        size = max(1, self.config.block_tokens)
        hit, missed, key = 0, False, ""
        for end in range(size, len(ids), size):  # full blocks that leave at least the last token
            key = hashlib.sha1(f"{key}{ids[end - size:end]}".encode()).hexdigest()  # the block and its prefix
            if not missed and key in self.cached_blocks:
                hit = end
            else:
                missed = True
                self.cached_blocks.add(key)
        self.counters["prefix_cache_queries"] += len(ids)
        self.counters["prefix_cache_hits"] += hit
        return hit

    # ---- generation --------------------------------------------------------------------------------
    def pick_fault(self, header: str | None) -> str | None:
        """The fault for the next generation request: a header wins, else the configured one."""
        self.requests_seen += 1
        if header:
            return header
        cfg = self.config
        if cfg.fault and (self.requests_seen - 1) % max(1, cfg.fault_every) == 0:
            return cfg.fault
        return None

    def start_stream(self, stream: _Stream, delay_s: float) -> None:
        """Schedule the first token `delay_s` after the request was read."""
        stream.next_due = stream.truth.recv + delay_s
        self._push(stream)

    def _push(self, stream: _Stream) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (stream.next_due, self._seq, stream))
        if self._heap[0][2] is stream:
            self._arm()

    def _arm(self) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        if not self._heap:
            self._timer = None
            return
        # loop.time() may use another origin (uvloop); convert through the offset measured now.
        when = self._heap[0][0] - time.perf_counter() + self._loop.time()
        self._timer = self._loop.call_at(when, self._tick)

    def _tick(self) -> None:
        """Write every chunk that is due (0.3 ms of slack batches streams due together)."""
        self._timer = None
        heap = self._heap
        limit = time.perf_counter() + 0.0003
        while heap and heap[0][0] <= limit:
            _, _, s = heapq.heappop(heap)
            if self._send_next(s):
                s.next_due += self.config.itl_ms / 1000.0
                self._seq += 1
                heapq.heappush(heap, (s.next_due, self._seq, s))
        self._arm()

    def _send_next(self, s: _Stream) -> bool:
        """Send the next token of `s` (all of them when itl is 0); False when the stream is over."""
        t = s.proto.transport
        if t is None or t.is_closing():
            self.running -= 1
            return False
        if self.config.itl_ms <= 0:
            r = min(s.reasoning_left, s.left - 1)
            t.write(s.reasoning_chunk * r + s.token_chunk * (s.left - 1 - r) + s.last_chunk)
            now = time.perf_counter()
            s.truth.sends.extend([now] * s.left)
            s.left = 0
        else:
            s.left -= 1
            if s.reasoning_left > 0 and s.left > 0:
                s.reasoning_left -= 1
                t.write(s.reasoning_chunk)
            else:
                t.write(s.last_chunk if s.left == 0 else s.token_chunk)
            s.truth.sends.append(time.perf_counter())
            if self._inject_midstream(s, t, len(s.truth.sends)):
                return False
        if s.left > 0:
            return True
        t.write(s.tail)
        s.truth.done = time.perf_counter()
        t.close()
        self.running -= 1
        self.counters["generation_tokens"] += len(s.truth.sends) + self.config.other_traffic_tokens
        self.counters["success"] += 1
        return False

    def _inject_midstream(self, s: _Stream, t: asyncio.WriteTransport, sent: int) -> bool:
        """Faults that strike after 3 tokens; True when the stream is over."""
        if s.fault not in ("malformed_sse", "error_event", "drop") or sent != 3:
            return False
        self.running -= 1
        if s.fault == "drop":
            t.abort()
        elif s.fault == "malformed_sse":
            t.write(_chunk(b"data: {\"id\": this is not json\n\n") + _END)
            t.close()
        else:
            t.write(_sse({"error": {"message": "injected failure", "type": "InternalServerError",
                                    "code": 500}}) + _DONE + _END)
            t.close()
        return True


class _HTTPServerProtocol(asyncio.Protocol):
    """Reads one HTTP/1.1 request per connection and answers it."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.handled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.server._protocols.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._protocols.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.handled:
            return
        self.buf += data
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return
        lines = self.buf[:head_end].decode("latin-1").split("\r\n")
        method, path, _ = (lines[0].split(" ") + ["", ""])[:3]
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        length = int(headers.get("content-length", "0") or 0)
        body = self.buf[head_end + 4:]
        if len(body) < length:
            return
        self.handled = True
        try:
            self.handle(method, path.split("?")[0], headers, body[:length], now)
        except Exception as e:  # noqa: BLE001 - a bug here must answer 500, not hang the client
            self.reply(500, _error_body(500, f"fake server bug: {e!r}"))

    def reply(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        assert self.transport is not None
        self.transport.write(_response(status, body, ctype))
        self.transport.close()

    def reply_json(self, obj: Any, status: int = 200) -> None:
        self.reply(status, json.dumps(obj).encode())

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes, now: float) -> None:
        srv = self.server
        if path == "/health":
            return self.reply(200, b"")
        if path == "/v1/models":
            return self.reply_json({"object": "list", "data": [
                {"id": srv.config.model, "object": "model", "max_model_len": srv.config.max_model_len}]})
        if path == "/metrics":
            return self.reply(200, self.metrics_text().encode(), "text/plain; version=0.0.4")
        if path == "/fake/truth":
            return self.reply_json([t.to_dict() for t in srv.truth])
        req = json.loads(body or b"{}")
        if path == "/fake/config" and method == "POST":
            srv.configure(**{k: v for k, v in req.items() if k in {f.name for f in fields(FakeConfig)}})
            return self.reply_json({"ok": True})
        if path == "/fake/reset" and method == "POST":
            srv.reset_truth()
            return self.reply_json({"ok": True})
        if path == "/reset_prefix_cache" and method == "POST" and srv.config.dev_mode:
            srv.cached_blocks.clear()
            return self.reply_json({"success": True})
        if path == "/tokenize":
            return self.tokenize(req)
        if path == "/detokenize":
            return self.reply_json({"prompt": srv.tokenizer.decode(req.get("tokens", []))})
        if path in ("/v1/completions", "/v1/chat/completions") and method == "POST":
            return self.generate(path.endswith("chat/completions"), req, headers, now)
        self.reply(404, _error_body(404, f"no route {method} {path}"))

    def tokenize(self, req: dict[str, Any]) -> None:
        tok = self.server.tokenizer
        if "messages" in req:
            ids = tok.encode(tok.chat_template(req["messages"]), req.get("add_special_tokens", True))
        else:
            ids = tok.encode(req.get("prompt", ""), req.get("add_special_tokens", True))
        self.reply_json({"count": len(ids), "tokens": ids, "max_model_len": self.server.config.max_model_len})

    def generate(self, chat: bool, req: dict[str, Any], headers: dict[str, str], now: float) -> None:
        srv, cfg = self.server, self.server.config
        fault = srv.pick_fault(headers.get("x-fake-fault"))
        if fault and fault.startswith("http_"):
            status = int(fault[5:]) if fault[5:].isdigit() else 500
            return self.reply(status, _error_body(status, f"injected {fault}"))
        if req.get("model") != cfg.model:
            return self.reply(404, _error_body(404, f"The model `{req.get('model')}` does not exist."))
        text = srv.tokenizer.chat_template(req.get("messages", [])) if chat else req.get("prompt", "")
        ids = srv.tokenizer.encode(text) if cfg.prefix_cache else []
        n_prompt = len(ids) if cfg.prefix_cache else srv.tokenizer.count(text)
        if n_prompt > cfg.max_model_len:
            return self.reply(400, _error_body(
                400, f"This model's maximum context length is {cfg.max_model_len} tokens. However, your "
                     f"request has {n_prompt} input tokens."))
        key = prompt_key(req["messages"][-1]["content"] if chat else text)
        truth = Truth(key=key, recv=now, prompt_tokens=n_prompt)
        if cfg.record_truth:
            srv.truth.append(truth)
        srv.counters["prompt_tokens"] += n_prompt
        if fault == "hang":
            return
        cached = srv.lookup_prefix(ids)
        n_out = int(req.get("max_tokens") or 16)
        reasoning = min(cfg.reasoning_tokens, n_out - 1) if chat else 0
        usage: dict[str, Any] | None = None if fault == "no_usage" else {
            "prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out,
            "prompt_tokens_details": {"cached_tokens": cached}}
        if usage is not None and reasoning > 0:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        chunks, head = self.stream_chunks(chat)
        tail = (b"" if usage is None else _sse(head | {"choices": [], "usage": usage}))
        tail += (b"" if fault == "no_done" else _DONE) + _END
        srv.running += 1
        delay = cfg.slow_first_byte_ms / 1000.0 if fault == "slow_first_byte" else 0.0
        reasoning_chunk = self.reasoning_chunk(head) if reasoning > 0 else b""
        stream = _Stream(self, truth, (chunks[0], chunks[1], tail), max(1, n_out), fault,
                         (reasoning_chunk, max(0, reasoning)))
        assert srv._loop is not None and self.transport is not None
        if delay:
            srv._loop.call_later(delay, self.transport.write, _STREAM_HEAD + chunks[2])
        else:
            self.transport.write(_STREAM_HEAD + chunks[2])
        srv.start_stream(stream, delay + (cfg.ttft_ms + cfg.prefill_ms_per_token * (n_prompt - cached)) / 1000.0)

    def reasoning_chunk(self, head: dict[str, Any]) -> bytes:
        """A chat chunk whose delta carries reasoning (in the configured field), not content."""
        field_name = self.server.config.reasoning_field
        return _sse(head | {"choices": [{"index": 0, "delta": {field_name: " think"}, "logprobs": None,
                                         "finish_reason": None}]})

    def stream_chunks(self, chat: bool) -> tuple[tuple[bytes, bytes, bytes], dict[str, Any]]:
        """Pre-built (token chunk, last token chunk, opening chunk): sending is then just writes.

        Built once per (api, model) and shared by all streams: per-request work delays the reading of
        the next request, which a benchmark at 1024 simultaneous requests would see as server latency.
        """
        key = (chat, self.server.config.model)
        cache = self.server._chunk_cache
        if key not in cache:
            cache[key] = self._build_chunks(chat, key[1])
        return cache[key]

    def _build_chunks(self, chat: bool, model: str) -> tuple[tuple[bytes, bytes, bytes], dict[str, Any]]:
        if chat:
            head = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                    "model": model}

            def choice(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
                return head | {"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

            tok = _sse(choice({"content": TOKEN_TEXT}, None))
            last = _sse(choice({"content": TOKEN_TEXT}, "length"))
            first = _sse(choice({"role": "assistant", "content": ""}, None))
            return (tok, last, first), head
        head = {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()), "model": model}

        def c(finish: str | None) -> dict[str, Any]:
            return head | {"choices": [{"index": 0, "text": TOKEN_TEXT, "logprobs": None, "finish_reason": finish,
                                        "stop_reason": None}]}

        return (_sse(c(None)), _sse(c("length")), b""), head

    def metrics_text(self) -> str:
        srv = self.server
        m = f'model_name="{srv.config.model}"'
        return (f"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{{m}}} {srv.running}\n"
                f"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{{m}}} 0\n"
                f"# TYPE vllm:prompt_tokens_total counter\nvllm:prompt_tokens_total{{{m}}} "
                f"{srv.counters['prompt_tokens']}\n"
                f"# TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total{{{m}}} "
                f"{srv.counters['generation_tokens']}\n"
                f"# TYPE vllm:request_success_total counter\n"
                f'vllm:request_success_total{{{m},finished_reason="length"}} {srv.counters["success"]}\n'
                f"# TYPE vllm:prefix_cache_queries counter\nvllm:prefix_cache_queries_total{{{m}}} "
                f"{srv.counters['prefix_cache_queries']}\n"
                f"# TYPE vllm:prefix_cache_hits counter\nvllm:prefix_cache_hits_total{{{m}}} "
                f"{srv.counters['prefix_cache_hits']}\n")


def main(argv: list[str] | None = None) -> None:
    """Command line: serve until interrupted (or `--duration-s`)."""
    ap = argparse.ArgumentParser(prog="python -m pytest_llmload.testing.fakeserver", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--ttft-ms", type=float, default=100.0)
    ap.add_argument("--itl-ms", type=float, default=20.0)
    ap.add_argument("--model", default="fake-model")
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--fault", default=None, help=f"one of {', '.join(FAULTS)}")
    ap.add_argument("--fault-every", type=int, default=1)
    ap.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU")
    ap.add_argument("--uvloop", action="store_true", help="serve on uvloop")
    ap.add_argument("--duration-s", type=float, default=None, help="exit after this many seconds")
    a = ap.parse_args(argv)
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})
    cfg = FakeConfig(ttft_ms=a.ttft_ms, itl_ms=a.itl_ms, model=a.model, max_model_len=a.max_model_len,
                     fault=a.fault, fault_every=a.fault_every)
    server = FakeServer(cfg, host=a.host, port=a.port)

    async def serve() -> None:
        await server.start_async()
        print(f"fake server listening on {server.base_url}", flush=True)
        try:
            await asyncio.sleep(a.duration_s if a.duration_s else 10 ** 9)
        finally:
            await server.stop_async()

    try:
        if a.uvloop:
            import uvloop
            uvloop.run(serve())
        else:
            asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
