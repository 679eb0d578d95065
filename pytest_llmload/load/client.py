"""One streaming request -> one RequestRecord: a raw asyncio HTTP/1.1 client that measures the server.

Why not httpx or aiohttp: the benchmark (`benchmarks/README.md`) measured them against this client on
one core at 1024 simultaneous streams; their per-chunk overhead (and httpx's default connection pool)
shows up as latency that the server never had. Here every chunk is timestamped in `data_received`
before anything else runs, and the common token chunk is recognised by a few byte compares instead of
a full JSON decode; chunks that may carry `usage`, an error, a finish reason or a role are decoded in
full, as is anything that does not look like a JSON object. What a streamed event costs the client
(one event per read, as servers send them) is measured by `benchmarks/bench_event_cost.py`.

One connection per request (`Connection: close`): N simultaneous users are N connections, and the
runner opens them all before it writes the first request (`StreamRequest.connect`, then `send`).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl as _ssl
import time
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

from ..control import normalize_base_url
from ..results import RequestRecord

MAX_ERROR_BODY = 64 * 1024  # bytes of an error response we keep reading for the detail
DETAIL_CHARS = 500

# A payload that may carry usage, an error, the end or a role is decoded in full; the plain token chunk
# (the other 99 %) is recognised by two regex searches, or, once a stream has sent one, by comparing
# with it (`StreamProtocol._token_chunk`). Unescaped `"key":` cannot occur inside a JSON string (its
# quotes would be escaped), so these cannot be fooled by generated text.
_SPECIAL = re.compile(rb'"(?:usage"\s*:\s*\{|error"|finish_reason"\s*:\s*"|role"|object"\s*:\s*"error)')
_CONTENT = re.compile(rb'"(?:text|content|reasoning_content|reasoning)"\s*:\s*"[^"]')
# The answer itself (not reasoning): TTFC is the first chunk that has one.
_ANSWER = re.compile(rb'"(?:text|content)"\s*:\s*"[^"]')
# A byte that, between the template's head and tail, could end the JSON string or the SSE line.
# (A search that finds nothing allocates nothing: cheaper than a fullmatch of the allowed bytes.)
_NOT_TEXT = re.compile(rb'["\\\n]')
_perf_counter = time.perf_counter  # one global lookup per read instead of two


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where requests go: host, port, TLS, the path prefix of the base URL, and the headers to send."""

    host: str
    port: int
    tls: bool
    prefix: str
    host_header: str
    api_key: str | None = None

    @classmethod
    def from_url(cls, base_url: str, api_key: str | None = None) -> Endpoint:
        """`http://127.0.0.1:8000` or `.../v1` (a trailing `/v1` is dropped: paths add it)."""
        u = urlsplit(normalize_base_url(base_url))
        assert u.hostname is not None  # normalize_base_url checked it
        tls = u.scheme == "https"
        return cls(u.hostname, u.port or (443 if tls else 80), tls, u.path, u.netloc, api_key)


def request_body(api: str, model: str, prompt: str, max_tokens: int,
                 history: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The JSON body of one streamed generation request: exactly `max_tokens` tokens, usage at the end.
    `history`: a conversation's earlier messages (chat), sent before the new user message."""
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
                            "stream_options": {"include_usage": True}}
    if api == "chat":
        body["messages"] = [*(history or ()), {"role": "user", "content": prompt}]
    elif api == "completions":
        body["prompt"] = prompt
    else:
        raise ValueError(f"api must be 'completions' or 'chat', got {api!r}")
    return body


def api_path(api: str) -> str:
    return "/v1/chat/completions" if api == "chat" else "/v1/completions"


def http_request(endpoint: Endpoint, path: str, body: dict[str, Any]) -> bytes:
    """The bytes of a POST with a JSON body, built once so that sending is a single write."""
    data = json.dumps(body, separators=(",", ":")).encode()
    auth = f"authorization: Bearer {endpoint.api_key}\r\n" if endpoint.api_key else ""
    head = (f"POST {endpoint.prefix}{path} HTTP/1.1\r\nhost: {endpoint.host_header}\r\n"
            f"content-type: application/json\r\naccept: text/event-stream\r\n{auth}"
            f"content-length: {len(data)}\r\nconnection: close\r\n\r\n")
    return head.encode() + data


def error_kind(status: int) -> str:
    """ERROR_KINDS name of an HTTP status."""
    if status in (400, 404, 429):
        return f"http_{status}"
    return "http_5xx" if 500 <= status < 600 else "http_other"


class StreamProtocol(asyncio.Protocol):
    """Parses one HTTP/1.1 response (chunked, Content-Length or until close) carrying SSE events."""

    def __init__(self, done: asyncio.Future[None], keep_text: bool = False) -> None:
        self.done = done
        # A conversation needs the reply to send it back as history: every event is then decoded in full
        # (never the fast path) and its answer text kept.
        self.keep_text = keep_text
        self.text: list[str] = []
        self.first_content: float | None = None  # first chunk with answer content (not reasoning)
        self.reasoning_chunks = 0
        self.reasoning_tokens: int | None = None  # usage.completion_tokens_details.reasoning_tokens
        self.cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens
        self.transport: asyncio.Transport | None = None
        self.now = 0.0  # arrival time of the data being parsed
        self.start: float | None = None
        self.end: float | None = None
        self.first_token: float | None = None
        self.chunk_times: list[float] = []
        self.prompt_tokens: int | None = None
        self.output_tokens: int | None = None
        self.status: int | None = None
        self.error: str | None = None
        self.detail: str | None = None
        self.saw_done = False
        self._head = b""
        self._chunked = False
        self._length: int | None = None  # Content-Length of the body, if given
        self._body_seen = 0
        self._raw = b""  # undecoded chunked framing
        self._need = -1  # bytes of chunk data still expected (-1: expecting a size line)
        self._sse = b""  # body bytes not yet split into lines
        self._data: list[bytes] = []  # `data:` lines of the event being read
        self._err_body = bytearray()
        # True while a 200 chunked body is between two chunks with nothing buffered: the next read
        # may then go to `_fast_chunks`. Recomputed after every read the general parser handled.
        self._between = False
        # The last plain token chunk, cut around its text: (`data: {...,"text":"`, `",...}\n\n\r\n`).
        self._tpl_head = b""
        self._tpl_tail = b""
        self._tpl_answer = True  # the template's text is answer content (else reasoning)
        self._answer = True  # the kind of the chunk `_token_chunk` last recognised

    # ---- asyncio callbacks ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.now = _perf_counter()  # first thing: the arrival time is what we measure
        if self._between:
            self._fast_chunks(data)
            return
        if self.end is not None:
            return
        if self.status is None:
            data = self._read_head(data)
            if not data:
                self._settle()
                return
        if self._chunked:
            self._dechunk(data)
        else:
            self._body(data)
        self._settle()

    def _settle(self) -> None:
        """After the general parser: may the next read take the fast path?"""
        self._between = (self.end is None and self.status == 200 and self._chunked and self._need < 0
                         and not self._raw and not self._sse and not self._data and not self.keep_text)

    def _fast_chunks(self, data: bytes) -> None:
        """The hot path: whole HTTP chunks that each hold one plain token event (vLLM sends exactly that,
        one chunk per write, so a read is usually exactly one such chunk).

        Anything else (a split chunk, [DONE], usage, several lines) goes, from that point on, to the
        general parser, which handles every case; this loop only saves its per-line function calls.
        """
        pos, n, token_chunk = 0, len(data), self._token_chunk
        now, times = self.now, self.chunk_times
        while pos < n:
            end = token_chunk(data, pos)
            if end < 0:
                break
            if self.first_token is None:
                self.first_token = now
            if self._answer:
                if self.first_content is None:
                    self.first_content = now
            else:
                self.reasoning_chunks += 1
            times.append(now)
            pos = end
        if pos < n:
            self._between = False
            self._dechunk(data[pos:] if pos else data)
            self._settle()

    def _token_chunk(self, data: bytes, pos: int) -> int:
        """The end of the HTTP chunk at `pos` when it is whole and holds one plain token event, else -1.

        Per stream, the chunks of a server differ only in the token text, so the last plain token chunk
        is kept as a template cut around its text: a chunk that has its bytes before and after, and in
        between only text without a quote, a backslash or a newline, has the same JSON structure (the
        text cannot close its string), hence is a plain token chunk too: two byte compares and a search
        of the few text bytes instead of two regex searches of the whole payload. Anything else is
        checked by the regexes (`_plain_token_chunk`).
        """
        eol = data.find(b"\r\n", pos, pos + 10)
        if eol <= pos:
            return -1
        try:
            size = int(data[pos:eol], 16)
        except ValueError:
            return -1
        start = eol + 2
        end = start + size + 2  # the chunk's data, then its CRLF
        if end > len(data):
            return -1
        head, tail = self._tpl_head, self._tpl_tail
        text, text_end = start + len(head), end - len(tail)
        if (head and text < text_end and data.startswith(head, start) and data.startswith(tail, text_end)
                and _NOT_TEXT.search(data, text, text_end) is None):
            self._answer = self._tpl_answer
            return end
        return end if self._plain_token_chunk(data, start, end) else -1

    def _plain_token_chunk(self, data: bytes, start: int, end: int) -> bool:
        """Is data[start:end] `data: {...}\n\n\r\n` with a plain token payload? (And keep it as the template.)"""
        if end - start < 12 or not data.startswith(b"data: {", start) or not data.startswith(b"}\n\n\r\n", end - 5):
            return False
        p0, p1 = start + 6, end - 4  # the payload: from `{` to `}`
        if data.find(b"\n", p0, p1) >= 0 or _SPECIAL.search(data, p0, p1) is not None:
            return False
        m = _CONTENT.search(data, p0, p1)
        if m is None:
            return False
        answer = _ANSWER.search(data, p0, p1) is not None
        self._answer = answer
        text = m.end() - 1  # the first byte of the (non-empty) text
        close = data.find(b'"', text, p1)
        # The template is cut around the one text the chunk has (a chunk with reasoning and answer is not one).
        one_kind = answer == (_ANSWER.match(data, m.start()) is not None)
        if close > text and data.find(b"\\", text, close) < 0 and one_kind:  # no escapes: `close` ends it
            self._tpl_head, self._tpl_tail, self._tpl_answer = data[start:text], data[close:end], answer
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.now = time.perf_counter()
        if self.end is not None:
            return
        if self.status is None:
            self.fail("connect", f"connection closed before a response: {exc or 'EOF'}")
        elif self.status != 200:
            self._finish_http_error()
        else:
            if self._sse.strip():  # a last event without its blank line
                self._body(b"\n\n")
            if self.end is None:
                self.fail("incomplete_stream", f"stream ended without [DONE]: {exc or 'EOF'}")

    # ---- HTTP framing --------------------------------------------------------------------------------
    def _read_head(self, data: bytes) -> bytes:
        """Accumulate the status line and headers; returns the body bytes that followed them."""
        self._head += data
        i = self._head.find(b"\r\n\r\n")
        if i < 0:
            if len(self._head) > 65536:
                self.fail("malformed_sse", "response headers larger than 64 KiB")
            return b""
        head, rest = self._head[:i].decode("latin-1"), self._head[i + 4:]
        self._head = b""
        lines = head.split("\r\n")
        try:
            self.status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            self.fail("malformed_sse", f"bad status line {lines[0]!r}")
            return b""
        for line in lines[1:]:
            k, _, v = line.partition(":")
            k = k.strip().lower()
            if k == "transfer-encoding" and "chunked" in v.lower():
                self._chunked = True
            elif k == "content-length":
                self._length = int(v.strip() or 0)
        if self.status != 200 and self._length == 0:
            self._finish_http_error()
            return b""
        return rest

    def _dechunk(self, data: bytes) -> None:
        """Strip chunked framing; chunk boundaries may fall anywhere in `data`."""
        raw = self._raw + data if self._raw else data
        pos, n = 0, len(raw)
        while pos < n and self.end is None:
            if self._need < 0:
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    break
                try:
                    size = int(raw[pos:eol].split(b";", 1)[0], 16)
                except ValueError:
                    self.fail("malformed_sse", f"bad chunk size line {raw[pos:eol][:40]!r}")
                    return
                pos = eol + 2
                if size == 0:  # last chunk: the body is complete
                    self._body(b"\n\n" if self._sse.strip() else b"")
                    self._body_complete()
                    return
                self._need = size + 2  # data and its CRLF
            need = self._need
            take = min(need, n - pos)
            data_take = min(take, max(0, need - 2))  # the chunk's CRLF is framing, not data
            if data_take:
                self._body(raw[pos:pos + data_take])
            pos += take
            self._need = need - take
            if self._need == 0:
                self._need = -1
        self._raw = raw[pos:] if pos < n else b""

    def _body(self, data: bytes) -> None:
        """Body bytes: an error body is kept for the detail; a 200 body is SSE."""
        if self.status != 200:
            self._err_body += data[: MAX_ERROR_BODY - len(self._err_body)]
            self._body_seen += len(data)
            if self._length is not None and self._body_seen >= self._length or len(self._err_body) >= MAX_ERROR_BODY:
                self._finish_http_error()
            return
        buf = self._sse + data if self._sse else data
        start = 0
        while self.end is None:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            self._line(buf[start:nl])
            start = nl + 1
        self._sse = buf[start:] if self.end is None else b""
        if self._length is not None and not self._chunked:
            self._body_seen += len(data)
            if self._body_seen >= self._length:
                self._body_complete()

    def _body_complete(self) -> None:
        if self.end is not None:
            return
        if self.status != 200:
            self._finish_http_error()
        else:
            self.fail("incomplete_stream", "response body ended without [DONE]")

    # ---- SSE -----------------------------------------------------------------------------------------
    def _line(self, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:  # a blank line ends the event
            if self._data:
                payload = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                self._data = []
                self._event(payload)
            return
        if line.startswith(b"data:"):
            self._data.append(line[6:] if line[5:6] == b" " else line[5:])
        # comments (`:`), `event:`, `id:`, `retry:` carry nothing we measure

    def _event(self, p: bytes) -> None:
        if p == b"[DONE]":
            self.saw_done = True
            self._finish()
            return
        if not self.keep_text and _is_plain_token(p):
            self._content(_ANSWER.search(p) is not None)
            return
        try:
            obj = json.loads(p)
        except ValueError:
            self.fail("malformed_sse", f"data line is not JSON: {p[:200]!r}")
            return
        self._json_event(obj, p)

    def _json_event(self, obj: Any, raw: bytes) -> None:
        if not isinstance(obj, dict):
            self.fail("malformed_sse", f"data line is not a JSON object: {raw[:200]!r}")
            return
        if obj.get("error") or obj.get("object") == "error":
            err = obj.get("error", obj)
            self.fail("server_error_event", json.dumps(err)[:DETAIL_CHARS])
            return
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self._usage(usage)
        choices = obj.get("choices")
        if not isinstance(choices, list):
            if isinstance(usage, dict):
                return
            self.fail("malformed_sse", f"event without choices: {raw[:200]!r}")
            return
        kinds = [_content_kind(c) for c in choices]
        if any(kinds):
            self._content("answer" in kinds)
            if self.keep_text:
                self.text.extend(_answer_text(c) for c in choices)

    def _usage(self, usage: dict[str, Any]) -> None:
        self.prompt_tokens = usage.get("prompt_tokens")
        self.output_tokens = usage.get("completion_tokens")
        prompt_details, completion_details = usage.get("prompt_tokens_details"), usage.get("completion_tokens_details")
        if isinstance(prompt_details, dict) and isinstance(prompt_details.get("cached_tokens"), int):
            self.cached_tokens = prompt_details["cached_tokens"]
        if isinstance(completion_details, dict) and isinstance(completion_details.get("reasoning_tokens"), int):
            self.reasoning_tokens = completion_details["reasoning_tokens"]

    def _content(self, answer: bool = True) -> None:
        t = self.now
        if self.first_token is None:
            self.first_token = t
        if answer:
            if self.first_content is None:
                self.first_content = t
        else:
            self.reasoning_chunks += 1
        self.chunk_times.append(t)

    # ---- the end ---------------------------------------------------------------------------------------
    def _finish(self) -> None:
        if self.output_tokens is None and self.error is None:
            self.error, self.detail = "no_usage", "the stream ended with [DONE] but carried no usage"
        self._close()

    def _finish_http_error(self) -> None:
        body = self._err_body.decode("utf-8", "replace")
        self.fail(error_kind(self.status or 0), f"HTTP {self.status}: {_error_message(body)}")

    def fail(self, kind: str, detail: str) -> None:
        """End the request with an error (first error wins)."""
        if self.end is not None:
            return
        self.error, self.detail = kind, detail[:DETAIL_CHARS]
        self._close()

    def _close(self) -> None:
        self._between = False
        self.end = self.now or time.perf_counter()
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(None)


def _is_plain_token(p: bytes) -> bool:
    """A JSON object with non-empty text/content and nothing that needs decoding (usage, error, end)."""
    return p[:1] == b"{" and p[-1:] == b"}" and _SPECIAL.search(p) is None and _CONTENT.search(p) is not None


def _content_kind(choice: Any) -> str:
    """"answer" (text or content), "reasoning" (reasoning_content / reasoning only) or "" (neither)."""
    if not isinstance(choice, dict):
        return ""
    if choice.get("text"):
        return "answer"
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return ""
    if delta.get("content"):
        return "answer"
    return "reasoning" if delta.get("reasoning_content") or delta.get("reasoning") else ""


def _answer_text(choice: Any) -> str:
    if not isinstance(choice, dict):
        return ""
    delta = choice.get("delta")
    text = choice.get("text") or (delta.get("content") if isinstance(delta, dict) else None)
    return text if isinstance(text, str) else ""


def _error_message(body: str) -> str:
    """The `message` of an OpenAI-style error body, else the body itself."""
    try:
        obj = json.loads(body)
        err = obj.get("error", obj) if isinstance(obj, dict) else obj
        msg = err.get("message") if isinstance(err, dict) else None
        if msg:
            return str(msg)
        if isinstance(obj, dict) and obj.get("detail"):
            return str(obj["detail"])
    except ValueError:
        pass
    return body.strip()[:DETAIL_CHARS] or "(empty body)"


class StreamRequest:
    """One streaming request in three steps: `connect()`, `send()` (stamps the start), `wait()`.

    The split lets the runner open every connection of a cell first and then write all requests in a
    tight loop, so that N users really start together.
    """

    def __init__(self, endpoint: Endpoint, payload: bytes, *, index: int = 0,
                 expected_prompt_tokens: int | None = None, keep_text: bool = False,
                 conversation: int | None = None, turn: int | None = None) -> None:
        self.endpoint = endpoint
        self.payload = payload
        self.index = index
        self.expected_prompt_tokens = expected_prompt_tokens
        self.keep_text = keep_text
        self.conversation = conversation
        self.turn = turn
        self.proto: StreamProtocol | None = None
        self._done: asyncio.Future[None] | None = None
        self._connect_error: str | None = None

    async def connect(self, timeout: float = 30.0) -> bool:
        """Open the connection; False (and the request is failed as `connect`) when it cannot."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        proto = StreamProtocol(self._done, self.keep_text)
        self.proto = proto
        ctx = _ssl.create_default_context() if self.endpoint.tls else None
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: proto, self.endpoint.host, self.endpoint.port, ssl=ctx), timeout)
        except (OSError, asyncio.TimeoutError) as e:
            proto.now = time.perf_counter()
            proto.start = proto.now
            proto.fail("connect", f"cannot connect to {self.endpoint.host}:{self.endpoint.port}: {e!r}")
            return False
        if proto.end is not None:  # aborted while connecting (server death, cancel)
            transport.abort()
            return False
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return True

    def fail_now(self, kind: str, detail: str) -> None:
        """Record the request as failed without sending it (e.g. the server is already dead)."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self.proto = StreamProtocol(self._done)
        self.proto.now = self.proto.start = time.perf_counter()
        self.proto.fail(kind, detail)

    def send(self) -> float:
        """Write the request; the start time is taken just before the bytes go out."""
        proto = self.proto
        assert proto is not None, "connect() first"
        if proto.end is not None:  # the connection failed already; its start is now
            proto.start = proto.end = time.perf_counter()
            return proto.start
        proto.start = time.perf_counter()
        assert proto.transport is not None
        proto.transport.write(self.payload)
        return proto.start

    async def wait(self, timeout: float | None) -> None:
        """Until the response is complete, failed, or `timeout` seconds passed (then: `timeout`)."""
        assert self._done is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._done), timeout)
        except asyncio.TimeoutError:
            self.abort("timeout", f"no complete response within {timeout:g} s")

    def abort(self, kind: str, detail: str) -> None:
        """Fail the request now and drop its connection (used for timeouts, server death, cancel)."""
        proto = self.proto
        if proto is None or proto.end is not None:
            return
        proto.now = time.perf_counter()
        proto.fail(kind, detail)
        if proto.transport is not None:
            proto.transport.abort()

    @property
    def lost_connection(self) -> bool:
        """Whether the connection failed or was cut mid-stream (what a dying server does to a request)."""
        return self.proto is not None and self.proto.error in ("connect", "incomplete_stream")

    @property
    def finished(self) -> bool:
        return self.proto is not None and self.proto.end is not None

    @property
    def reply(self) -> str:
        """The answer text received (kept only with `keep_text`)."""
        return "" if self.proto is None else "".join(self.proto.text)

    def record(self, t0: float) -> RequestRecord:
        """The request as a `RequestRecord`, times relative to the cell start `t0`."""
        p = self.proto
        assert p is not None
        start = p.start if p.start is not None else (p.end or t0)
        end = p.end if p.end is not None else time.perf_counter()
        return RequestRecord(
            index=self.index, start=start - t0, end=end - t0,
            first_token=None if p.first_token is None else p.first_token - t0,
            chunk_times=tuple(t - t0 for t in p.chunk_times),
            prompt_tokens=p.prompt_tokens, output_tokens=p.output_tokens,
            expected_prompt_tokens=self.expected_prompt_tokens, error=p.error, error_detail=p.detail,
            conversation=self.conversation, turn=self.turn, **_reasoning_fields(p, t0),
            cached_tokens=p.cached_tokens)


def _reasoning_fields(p: StreamProtocol, t0: float) -> dict[str, Any]:
    """`first_content` and `reasoning_tokens` of a record: set only for a stream that carried reasoning."""
    if not p.reasoning_chunks and not p.reasoning_tokens:
        return {}
    tokens = p.reasoning_tokens if p.reasoning_tokens is not None else p.reasoning_chunks
    return {"first_content": None if p.first_content is None else p.first_content - t0, "reasoning_tokens": tokens}


async def stream_once(base_url: str, model: str, prompt: str, max_tokens: int = 100, *, api: str = "completions",
                      api_key: str | None = None, timeout: float = 600.0,
                      expected_prompt_tokens: int | None = None) -> RequestRecord:
    """Send one streaming request and return its record (times relative to its own start)."""
    ep = Endpoint.from_url(base_url, api_key)
    req = StreamRequest(ep, http_request(ep, api_path(api), request_body(api, model, prompt, max_tokens)),
                        expected_prompt_tokens=expected_prompt_tokens)
    try:
        await req.connect(min(timeout, 30.0))
        t0 = req.send()
        await req.wait(timeout)
    finally:
        req.abort("timeout", "cancelled")
    return req.record(t0)
