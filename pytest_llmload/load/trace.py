"""Recorded traffic to replay: a JSONL workload file, read and checked line by line, and a converter.

One request a line:

    {"prompt_tokens": 480, "output_tokens": 120, "arrival_s": 0.25, "conversation_id": "c7", "turn": 1}
    {"prompt": "Summarise ...", "output_tokens": 64}

- `prompt_tokens` (a prompt of exactly that many tokens is built, distinct per request) or `prompt`
  (sent verbatim; with `prompt_tokens` too, usage is checked against it);
- `output_tokens`: tokens to generate (`max_tokens` with `ignore_eos`);
- `arrival_s` (optional): when the request arrives, seconds after the trace's start; every line needs it
  for an open-loop replay, which sends each request at `arrival_s / speed`;
- `conversation_id`, `turn` (optional): carried into the records; a closed-loop replay gives a user a
  whole conversation, its turns in order. A line's prompt is the whole prompt the server saw (its
  history included): the replay sends it as it is and does not add a history of its own.

A bad line (not JSON, a missing or unknown field, a negative time or size) is a `WorkloadError`
naming the file and the line, raised when the file is read: at collection for `--llm-workload`.

`llmload-workload sharegpt in.json out.jsonl` converts ShareGPT-style JSON (a list of
`{"id", "conversations": [{"from": "human"|"gpt", "value": ...}]}`) into such a file: one line per
human turn followed by a reply, `prompt` the human text, `output_tokens` the reply's length.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError

FIELDS = ("prompt_tokens", "prompt", "output_tokens", "arrival_s", "conversation_id", "turn")
SAMPLE = "sample-trace.jsonl"  # in pytest_llmload/data: 200 requests, 10 req/s, a few conversations


class WorkloadError(ConfigError):
    """A workload file that cannot be replayed; the message names the file and the line."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One line of a workload file."""

    line: int  # 1-based, for messages
    output_tokens: int
    prompt_tokens: int | None = None
    prompt: str | None = None
    arrival_s: float | None = None
    conversation_id: str | None = None
    turn: int | None = None


@dataclass(frozen=True)
class Workload:
    """A whole trace; `name` (the file's stem) names its cells."""

    name: str
    requests: tuple[TraceRequest, ...]
    path: str = ""

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def timed(self) -> bool:
        """Every request has an arrival time (an open-loop replay needs that)."""
        return bool(self.requests) and all(r.arrival_s is not None for r in self.requests)

    def arrivals(self, speed: float = 1.0) -> list[float]:
        """Scheduled starts of an open-loop replay: arrival times, the first at 0, divided by `speed`."""
        if not self.timed:
            missing = next(r.line for r in self.requests if r.arrival_s is None) if self.requests else 0
            raise WorkloadError(f"{self.path or self.name}: an open-loop replay needs arrival_s on every line "
                                f"(line {missing} has none)")
        if speed <= 0 or not math.isfinite(speed):
            raise WorkloadError(f"replay speed must be a positive number, not {speed!r}")
        times = [float(r.arrival_s or 0.0) for r in self.requests]
        first = min(times)
        return [(t - first) / speed for t in times]

    def conversations(self) -> list[list[int]]:
        """Request indices grouped by conversation, each in turn order (a line without a conversation
        is one of its own), in the order conversations first appear."""
        groups: dict[object, list[int]] = {}
        for i, r in enumerate(self.requests):
            groups.setdefault(r.conversation_id if r.conversation_id is not None else ("line", i), []).append(i)
        return [sorted(ix, key=lambda i: (self.requests[i].turn or 0, i)) for ix in groups.values()]

    def conversation_numbers(self) -> list[int | None]:
        """Per request: the number of its conversation (in order of first appearance), None without one."""
        numbers: dict[str, int] = {}
        out: list[int | None] = []
        for r in self.requests:
            out.append(None if r.conversation_id is None else numbers.setdefault(r.conversation_id, len(numbers)))
        return out


def load_workload(path: str | Path) -> Workload:
    """Read and check a JSONL workload file (WorkloadError naming the line)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise WorkloadError(f"workload {path}: cannot read it ({exc.strerror or exc})") from None
    requests = [parse_line(raw, n, str(path)) for n, raw in enumerate(text.splitlines(), 1) if raw.strip()]
    if not requests:
        raise WorkloadError(f"workload {path}: no requests in it")
    return Workload(p.stem, tuple(requests), str(path))


def sample_workload() -> Workload:
    """The small trace shipped with the package (200 requests over 20 s, with arrival times)."""
    ref = resources.files("pytest_llmload") / "data" / SAMPLE
    with resources.as_file(ref) as path:
        return load_workload(path)


def parse_line(raw: str, n: int, where: str) -> TraceRequest:
    """One line of a workload file."""
    at = f"workload {where} line {n}"
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise WorkloadError(f"{at}: not JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise WorkloadError(f"{at}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise WorkloadError(f"{at}: unknown field(s) {', '.join(unknown)}; fields are {', '.join(FIELDS)}")
    if "output_tokens" not in obj:
        raise WorkloadError(f"{at}: missing output_tokens")
    if "prompt_tokens" not in obj and "prompt" not in obj:
        raise WorkloadError(f"{at}: needs prompt_tokens or prompt")
    prompt = obj.get("prompt")
    if prompt is not None and (not isinstance(prompt, str) or not prompt):
        raise WorkloadError(f"{at}: prompt must be a non-empty string")
    conversation = obj.get("conversation_id")
    if conversation is not None and not isinstance(conversation, (str, int)):
        raise WorkloadError(f"{at}: conversation_id must be a string or a number")
    return TraceRequest(
        line=n, output_tokens=_count(obj, "output_tokens", at, minimum=1),
        prompt_tokens=None if obj.get("prompt_tokens") is None else _count(obj, "prompt_tokens", at, minimum=1),
        prompt=prompt, arrival_s=_time(obj, "arrival_s", at),
        conversation_id=None if conversation is None else str(conversation),
        turn=None if obj.get("turn") is None else _count(obj, "turn", at, minimum=0))


def _count(obj: dict[str, Any], key: str, at: str, minimum: int) -> int:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise WorkloadError(f"{at}: {key} must be a whole number of {minimum} or more, not {value!r}")
    return value


def _time(obj: dict[str, Any], key: str, at: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise WorkloadError(f"{at}: {key} must be a number of seconds, 0 or more, not {value!r}")
    return float(value)


# ------------------------------------------------------------------------------- ShareGPT -> JSONL


def sharegpt_lines(data: Any, count_tokens: Any = None, rate: float | None = None) -> list[dict[str, Any]]:
    """Workload lines from ShareGPT-style conversations: one per human message followed by a reply.

    `count_tokens(text) -> int` sizes the reply (a tokenizer's count); without one, a reply's tokens are
    estimated as characters / 4 (say so when you use it). `rate`: add `arrival_s` at that many requests
    per second, evenly spaced, in file order.
    """
    if not isinstance(data, list):
        raise WorkloadError("ShareGPT input: expected a JSON list of conversations")
    count = count_tokens or (lambda text: max(1, round(len(text) / 4)))
    out: list[dict[str, Any]] = []
    for c, conv in enumerate(data):
        turns = conv.get("conversations") if isinstance(conv, dict) else None
        if not isinstance(turns, list):
            raise WorkloadError(f"ShareGPT input: conversation #{c + 1} has no 'conversations' list")
        cid = str(conv.get("id", c))
        turn = 0
        for ask, answer in zip(turns, turns[1:]):
            if not (isinstance(ask, dict) and isinstance(answer, dict)):
                continue
            if ask.get("from") not in ("human", "user") or answer.get("from") not in ("gpt", "assistant"):
                continue
            prompt, reply = str(ask.get("value") or ""), str(answer.get("value") or "")
            if not prompt or not reply:
                continue
            line: dict[str, Any] = {"prompt": prompt, "output_tokens": int(count(reply)),
                                    "conversation_id": cid, "turn": turn}
            if rate:
                line["arrival_s"] = round(len(out) / rate, 6)
            out.append(line)
            turn += 1
    return out


def _tokenizer_counter(path: str) -> Any:
    """A token counter from a Hugging Face tokenizer folder (`tokenizers` is enough)."""
    from tokenizers import Tokenizer  # noqa: PLC0415 - only for --tokenizer

    tok = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
    return lambda text: max(1, len(tok.encode(text, add_special_tokens=False).ids))


def main(argv: Sequence[str] | None = None) -> int:
    """`llmload-workload sharegpt IN.json OUT.jsonl [--tokenizer DIR] [--rate R] [--limit N]`."""
    ap = argparse.ArgumentParser(prog="llmload-workload", description="Make pytest-llmload workload files.")
    sub = ap.add_subparsers(dest="command", required=True)
    sg = sub.add_parser("sharegpt", help="convert ShareGPT-style JSON into a JSONL workload")
    sg.add_argument("input", help="ShareGPT JSON file (a list of {id, conversations: [{from, value}]})")
    sg.add_argument("output", help="the JSONL workload file to write")
    sg.add_argument("--tokenizer", metavar="DIR", help="size replies with this tokenizer (else characters/4)")
    sg.add_argument("--rate", type=float, metavar="REQ_PER_S", help="add arrival_s at this request rate")
    sg.add_argument("--limit", type=int, metavar="N", help="keep the first N requests")
    args = ap.parse_args(argv)
    try:
        data = json.loads(Path(args.input).read_text(encoding="utf-8"))
        lines = sharegpt_lines(data, _tokenizer_counter(args.tokenizer) if args.tokenizer else None, args.rate)
    except (OSError, ValueError) as exc:
        print(f"llmload-workload: {exc}", file=sys.stderr)
        return 2
    lines = lines[: args.limit] if args.limit else lines
    Path(args.output).write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    sized = "tokenizer" if args.tokenizer else "estimated as characters/4"
    print(f"wrote {len(lines)} requests to {args.output} (output tokens {sized})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
