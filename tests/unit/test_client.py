"""The streaming client's parser: HTTP framing split anywhere, SSE shapes, usage, error kinds."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_llmload.load import client
from pytest_llmload.load.client import Endpoint, StreamProtocol, error_kind, http_request, request_body, stream_once
from pytest_llmload.testing.fakeserver import FakeServer


class _Transport:
    """Stands in for the socket: records whether the client closed it."""

    closed = False

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def _chunked(*events: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
USAGE = _sse({"id": "x", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})
DONE = b"data: [DONE]\n\n"


def _tok(text: str, finish: str | None = None) -> bytes:
    return _sse({"id": "x", "object": "text_completion", "choices": [
        {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]})


def _chat(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return _sse({"id": "x", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": delta, "finish_reason": finish}]})


COMPLETION = HEAD + _chunked(_tok(" a"), _tok(" b c"), _tok(" d", "length"), USAGE, DONE)


def feed(loop: asyncio.AbstractEventLoop, pieces: list[bytes], *, eof: bool = True) -> StreamProtocol:
    p = StreamProtocol(loop.create_future())
    p.connection_made(_Transport())  # type: ignore[arg-type]
    for piece in pieces:
        p.data_received(piece)
    if eof:
        p.connection_lost(None)
    return p


def splits(data: bytes, n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), n))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


def test_a_completion_stream_gives_one_time_per_content_chunk_and_usage(loop: asyncio.AbstractEventLoop) -> None:
    p = feed(loop, [COMPLETION])
    assert p.error is None and p.saw_done
    assert len(p.chunk_times) == 3  # three content chunks, one of them carrying two tokens
    assert (p.prompt_tokens, p.output_tokens) == (7, 3)
    assert p.first_token is not None and p.end is not None
    assert p.transport is not None and p.transport.closed  # type: ignore[attr-defined]


@pytest.mark.parametrize("cut", range(1, len(COMPLETION)))
def test_a_single_cut_anywhere_changes_nothing(loop: asyncio.AbstractEventLoop, cut: int) -> None:
    p = feed(loop, [COMPLETION[:cut], COMPLETION[cut:]])
    assert (p.error, len(p.chunk_times), p.prompt_tokens, p.output_tokens) == (None, 3, 7, 3)


@pytest.mark.parametrize("seed", range(40))
def test_many_random_cuts_change_nothing(loop: asyncio.AbstractEventLoop, seed: int) -> None:
    p = feed(loop, splits(COMPLETION, 12, seed))
    assert (p.error, len(p.chunk_times), p.prompt_tokens, p.output_tokens) == (None, 3, 7, 3)


def test_byte_by_byte(loop: asyncio.AbstractEventLoop) -> None:
    p = feed(loop, [COMPLETION[i:i + 1] for i in range(len(COMPLETION))])
    assert (p.error, len(p.chunk_times), p.output_tokens) == (None, 3, 3)


def test_several_events_in_one_http_chunk_and_crlf_lines(loop: asyncio.AbstractEventLoop) -> None:
    crlf = (_tok(" a") + _tok(" b")).replace(b"\n", b"\r\n")
    body = HEAD + _chunked(crlf, _tok(" c", "length") + USAGE + DONE)
    p = feed(loop, [body])
    assert (p.error, len(p.chunk_times), p.output_tokens) == (None, 3, 3)


def test_comments_and_other_fields_are_ignored(loop: asyncio.AbstractEventLoop) -> None:
    body = HEAD + _chunked(b": keep-alive\n\n", b"event: message\n" + _tok(" a"), _tok(" b", "length"), USAGE, DONE)
    p = feed(loop, [body])
    assert (p.error, len(p.chunk_times)) == (None, 2)


def test_chat_role_chunk_is_not_the_first_token(loop: asyncio.AbstractEventLoop) -> None:
    body = HEAD + _chunked(_chat({"role": "assistant", "content": ""}), _chat({"content": "Hi"}),
                           _chat({"content": " there"}, "length"), USAGE, DONE)
    role_only = HEAD + _chunked(_chat({"role": "assistant", "content": ""}))
    p = feed(loop, [body])
    assert (p.error, len(p.chunk_times)) == (None, 2)
    assert feed(loop, [role_only], eof=False).first_token is None


def test_empty_text_chunks_do_not_count(loop: asyncio.AbstractEventLoop) -> None:
    body = HEAD + _chunked(_tok(""), _tok(" a"), _tok("", "length"), USAGE, DONE)
    p = feed(loop, [body])
    assert (p.error, len(p.chunk_times)) == (None, 1)


def test_text_that_looks_like_json_keys_does_not_fool_the_fast_path(loop: asyncio.AbstractEventLoop) -> None:
    sneaky = _tok('"usage": {"error": 1}, "finish_reason": "stop"')
    p = feed(loop, [HEAD + _chunked(sneaky, _tok(" b", "length"), USAGE, DONE)])
    assert (p.error, len(p.chunk_times), p.output_tokens) == (None, 2, 3)


def test_a_content_length_body_without_chunking(loop: asyncio.AbstractEventLoop) -> None:
    body = _tok(" a") + _tok(" b", "length") + USAGE + DONE
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n" % len(body)
    p = feed(loop, splits(head + body, 5, 1))
    assert (p.error, len(p.chunk_times)) == (None, 2)


@pytest.mark.parametrize(("events", "kind"), [
    ((_tok(" a"), b"data: {not json\n\n", DONE), "malformed_sse"),
    ((_tok(" a"), b"data: [1, 2]\n\n", DONE), "malformed_sse"),
    ((_tok(" a"), b'data: {"id": "x"}\n\n', DONE), "malformed_sse"),
    ((_tok(" a"), _sse({"error": {"message": "boom", "code": 500}}), DONE), "server_error_event"),
    ((_tok(" a"), _sse({"object": "error", "message": "boom"}), DONE), "server_error_event"),
    ((_tok(" a"), USAGE), "incomplete_stream"),
    ((_tok(" a"), DONE), "no_usage"),
])
def test_bad_streams_get_their_error_kind(loop: asyncio.AbstractEventLoop, events: tuple[bytes, ...],
                                          kind: str) -> None:
    p = feed(loop, [HEAD + _chunked(*events)])
    assert p.error == kind, p.detail


def test_a_connection_dropped_mid_stream_is_incomplete(loop: asyncio.AbstractEventLoop) -> None:
    p = feed(loop, [HEAD + b"%x\r\n" % len(_tok(" a")) + _tok(" a") + b"\r\n"])
    assert (p.error, len(p.chunk_times)) == ("incomplete_stream", 1)


def test_a_connection_closed_before_any_response_is_connect(loop: asyncio.AbstractEventLoop) -> None:
    assert feed(loop, []).error == "connect"


@pytest.mark.parametrize(("status", "kind"), [(400, "http_400"), (404, "http_404"), (429, "http_429"),
                                              (500, "http_5xx"), (503, "http_5xx"), (401, "http_other")])
def test_http_errors_keep_the_servers_message(loop: asyncio.AbstractEventLoop, status: int, kind: str) -> None:
    body = json.dumps({"error": {"message": "prompt too long", "code": status}}).encode()
    resp = b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        status, len(body), body)
    p = feed(loop, splits(resp, 3, status), eof=False)  # the body's length ends it, not the close
    assert p.error == kind and error_kind(status) == kind
    assert p.detail == f"HTTP {status}: prompt too long"


def test_http_error_with_chunked_or_eof_body(loop: asyncio.AbstractEventLoop) -> None:
    chunked = b"HTTP/1.1 500 X\r\ntransfer-encoding: chunked\r\n\r\n" + _chunked(b'{"detail": "oops"}')
    assert feed(loop, [chunked], eof=False).detail == "HTTP 500: oops"
    eof = b"HTTP/1.1 502 Bad Gateway\r\n\r\nupstream down"
    assert feed(loop, [eof]).detail == "HTTP 502: upstream down"


def test_request_bytes() -> None:
    ep = Endpoint.from_url("http://127.0.0.1:8000/v1", api_key="k")
    assert (ep.host, ep.port, ep.prefix) == ("127.0.0.1", 8000, "")
    body = request_body("chat", "m", "hi", 5)
    assert body["messages"] == [{"role": "user", "content": "hi"}] and body["ignore_eos"] is True
    assert body["stream_options"] == {"include_usage": True}
    raw = http_request(ep, "/v1/chat/completions", body)
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"authorization: Bearer k" in head and b"content-length: %d" % len(payload) in head
    assert json.loads(payload) == body
    with pytest.raises(ValueError):
        Endpoint.from_url("ftp://x")
    with pytest.raises(ValueError):
        request_body("embeddings", "m", "hi", 5)


def test_against_the_fake_server(llm_fake_server: FakeServer) -> None:
    for api in ("completions", "chat"):
        rec = asyncio.run(stream_once(llm_fake_server.base_url, "fake-model", "one two three", 10, api=api))
        assert rec.ok, rec.error_detail
        assert rec.output_tokens == 10 and len(rec.chunk_times) == 10
        assert rec.ttft is not None and rec.ttft >= 0.019  # the server waits 20 ms
        assert rec.e2e >= 0.019 + 9 * 0.002


def test_connection_refused_is_connect() -> None:
    rec = asyncio.run(stream_once("http://127.0.0.1:1", "m", "x", 5))
    assert rec.error == "connect"


# ---- one event per read: the fast path (a server writes one chunk per token, so most reads are one) -----------
def _one_per_read(*events: bytes) -> list[bytes]:
    """The reads of a server that writes one HTTP chunk per event and a client that keeps up."""
    return [HEAD] + [b"%x\r\n%s\r\n" % (len(e), e) for e in events] + [b"0\r\n\r\n"]


def _clocked(loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch, pieces: list[bytes]) -> StreamProtocol:
    """Feed `pieces` with a clock that reads 1.0, 2.0, ... at the n-th read: arrival times are read numbers."""
    ticks = iter(float(i) for i in range(1, 100_000))
    monkeypatch.setattr(client, "_perf_counter", lambda: next(ticks))
    return feed(loop, pieces)


TOKENS = [_tok(f" t{i}") for i in range(6)]
ONE_PER_READ = [*TOKENS, _tok(" end", "length"), USAGE, DONE]


def test_one_event_per_read_times_every_token_at_its_read(loop: asyncio.AbstractEventLoop,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    p = _clocked(loop, monkeypatch, _one_per_read(*ONE_PER_READ))
    assert (p.error, p.prompt_tokens, p.output_tokens) == (None, 7, 3)
    assert p.chunk_times == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]  # read 1 is the head; the finish chunk counts
    assert p.first_token == 2.0 and p.end == 10.0  # [DONE] is read 10
    assert p._tpl_head.startswith(b"data: {") and p._tpl_tail.endswith(b"}\n\n\r\n")  # the template was learned


def test_chat_one_event_per_read(loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    events = [_chat({"role": "assistant", "content": ""}), *(_chat({"content": w}) for w in ("Hi", " there", "!")),
              _chat({"content": ""}, "stop"), USAGE, DONE]
    p = _clocked(loop, monkeypatch, _one_per_read(*events))
    assert (p.error, p.chunk_times, p.first_token) == (None, [3.0, 4.0, 5.0], 3.0)  # the role chunk is not a token


@pytest.mark.parametrize("cut", range(1, len(b"".join(_one_per_read(*ONE_PER_READ)[3:]))))
def test_a_chunk_split_anywhere_after_fast_path_chunks(loop: asyncio.AbstractEventLoop, cut: int) -> None:
    reads = _one_per_read(*ONE_PER_READ)
    rest = b"".join(reads[3:])  # two token chunks went the fast way; the rest arrives in two reads
    p = feed(loop, [*reads[:3], rest[:cut], rest[cut:]])
    assert (p.error, len(p.chunk_times), p.prompt_tokens, p.output_tokens) == (None, 7, 7, 3)


@pytest.mark.parametrize("seed", range(30))
def test_reads_of_whole_chunks_mixed_with_split_ones(loop: asyncio.AbstractEventLoop, seed: int) -> None:
    rng = random.Random(seed)
    reads, out = _one_per_read(*ONE_PER_READ), []
    i = 0
    while i < len(reads):  # one chunk, a few chunks together, or a chunk cut in two
        k = rng.choice((1, 1, 2, 3))
        group = b"".join(reads[i:i + k])
        i += k
        if rng.random() < 0.3 and len(group) > 1:
            cut = rng.randrange(1, len(group))
            out += [group[:cut], group[cut:]]
        else:
            out.append(group)
    p = feed(loop, out)
    assert (p.error, len(p.chunk_times), p.prompt_tokens, p.output_tokens) == (None, 7, 7, 3)


def _like_template(text_json: str) -> bytes:
    """A token chunk whose JSON-encoded text is `text_json`, placed where the template's text goes."""
    return _tok("x").replace(b'"text": "x"', b'"text": "' + text_json.encode() + b'"')


@pytest.mark.parametrize(("text_json", "tokens", "usage", "error"), [
    # Escapes in the text: not the template way (a backslash could end the string), but still tokens.
    ('a\\"b', 1, None, None),
    ("line\\nbreak", 1, None, None),
    ('ends with a backslash\\\\', 1, None, None),
    ('\\"usage\\": {\\"prompt_tokens\\": 99}', 1, None, None),
    # Bytes that would end the string and add keys: same head and tail as the template, other JSON.
    ('a"}], "usage": {"prompt_tokens": 1, "completion_tokens": 2}, "x": [{"y": "z', 1, 1, None),
    ('a"}], "error": {"message": "boom"}, "x": [{"y": "z', 0, None, "server_error_event"),
    ("", 0, None, None),  # an empty text is not a token
])
def test_a_chunk_shaped_like_the_template_is_checked_in_full(loop: asyncio.AbstractEventLoop, text_json: str,
                                                             tokens: int, usage: int | None,
                                                             error: str | None) -> None:
    odd = _like_template(text_json)
    assert odd.startswith(_tok("x").split(b'"text": "')[0] + b'"text": "')  # the template's head, then the odd text
    p = feed(loop, _one_per_read(_tok(" a"), _tok(" b"), odd)[:-1], eof=False)  # stop after the odd chunk
    assert p.error == error, p.detail
    if error is None:
        assert (len(p.chunk_times), p.prompt_tokens) == (2 + tokens, usage)


def test_a_raw_newline_in_the_text_is_not_a_token_chunk(loop: asyncio.AbstractEventLoop) -> None:
    odd = _like_template("a\nb")  # not JSON: the SSE line ends at the newline
    p = feed(loop, _one_per_read(_tok(" a"), _tok(" b"), odd, DONE))
    assert (p.error, len(p.chunk_times)) == ("malformed_sse", 2)


def test_an_error_status_with_a_chunked_sse_body_records_no_token(loop: asyncio.AbstractEventLoop) -> None:
    head = b"HTTP/1.1 500 X\r\ntransfer-encoding: chunked\r\n\r\n"
    p = feed(loop, [head, *_one_per_read(_tok(" a"), _tok(" b"))[1:]], eof=False)
    assert (p.error, p.chunk_times, p.first_token) == ("http_5xx", [], None)


def test_the_template_head_with_another_tail_is_checked_in_full(loop: asyncio.AbstractEventLoop) -> None:
    head = _tok("x").split(b'"text": "')[0] + b'"text": "'  # as the template has it
    odd = head + b'a long text without quotes, longer than the template tail"}], "error": {"message": "boom"}}\n\n'
    p = feed(loop, _one_per_read(_tok(" a"), _tok(" b"), odd)[:-1], eof=False)
    assert (p.error, len(p.chunk_times)) == ("server_error_event", 2)


def test_a_read_after_the_request_ended_records_nothing(loop: asyncio.AbstractEventLoop) -> None:
    reads = _one_per_read(*ONE_PER_READ)
    p = feed(loop, reads[:3], eof=False)  # the head and two tokens, the fast way
    p.fail("timeout", "no complete response in time")  # what StreamRequest.abort does
    p.data_received(reads[3])
    assert (p.error, len(p.chunk_times)) == ("timeout", 2)
