"""Results of other load testers read as runs, so that `--llm-baseline` and `--llm-reference` accept them.

    vllm-bench  `vllm bench serve --save-result` files (a file, an --append-result file of several, or a
                folder of them, searched recursively; `*.pytorch.json` beside them are skipped)
    guidellm    GuideLLM's benchmarks.json (`guidellm run --output kind=json`; schema "version": 2)
    aiperf      AIPerf's profile_export_aiperf.json (`aiperf profile`; "schema_version" 1.x)

Each result becomes a closed-loop cell: users = its concurrency, rounds = its requests per user (vLLM bench: --max-concurrency, or every
prompt at once with neither a rate nor a concurrency), prompt tokens and max tokens = the mean input and
output tokens per successful request, rounded to whole tokens (the prompt sizes these tools draw are
within a token of the size asked, and `--ignore-eos` makes the output exact). It matches the run's cell
of exactly those numbers: nothing is matched by being near. A result at a request rate (an open loop, a
sweep's rate steps) or without the numbers is not turned into a cell: it is named in the notes, as is
every file that is none of these formats.

Each file is one session of the baseline (its own invocation of the tool), so the verdict's noise is
the spread between files: files made back to back against one server start understate it.

The tools' own definitions are mapped onto ours where they are the same quantity: vLLM's e2el/ttft/
tpot/itl are ours; GuideLLM's `inter_token_latency_ms` and AIPerf's `inter_token_latency` are per
request (E2E - TTFT) / (tokens - 1), our TPOT, and AIPerf's `inter_chunk_latency` is our ITL (GuideLLM
has no per-gap ITL). A statistic a file does not hold is NaN ("not in the file"), never estimated.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ReportFileError
from ..results import CellResult, CellStats, RunResult
from ..vocabulary import Distribution, distribution

FORMATS = ("vllm-bench", "guidellm", "aiperf")
NOTES_KEY = "import_notes"  # RunResult.extra of an imported run: what could not be read or matched
SOURCE_KEY = "source"  # a cell's extra: the format and file it came from
SESSION_KEY = "baseline_session"  # as gate.compare.SESSION_KEY: the file a cell came from
NAN = math.nan


@dataclass
class _Result:
    """One foreign result on its way to a cell."""

    file: Path
    fmt: str
    users: int
    prompt_tokens: float
    output_tokens: float
    completed: int
    failed: int
    duration_s: float
    stats: dict[str, Distribution | None]
    total_tokens_per_s: float
    requests: int
    model: str | None = None
    api: str | None = None
    when: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def sniff(path: Path | str) -> str | None:
    """The format of a file or folder: "llmload", one of FORMATS, or None."""
    path = Path(path)
    if path.is_dir():
        if (path / "llmload.json").exists():
            return "llmload"
        formats = {f for p in _json_files(path) if (f := _file_format(p)) is not None}
        return formats.pop() if len(formats) == 1 else ("mixed" if formats else None)
    return _file_format(path)


def is_foreign(path: Path | str) -> bool:
    """Whether `path` holds results of another tool (a format of FORMATS, or a folder mixing them)."""
    return sniff(path) in (*FORMATS, "mixed")


def read_foreign(path: Path | str) -> RunResult:
    """The results under `path` as one run, one baseline session per file; ReportFileError when nothing
    in it can be read. `extra["import_notes"]` names every file and result that did not become a cell."""
    path = Path(path)
    files = _json_files(path) if path.is_dir() else [path]
    results: list[_Result] = []
    notes: list[str] = []
    for f in files:
        fmt = _file_format(f)
        if fmt is None:
            notes.append(f"{f}: not a vLLM bench, GuideLLM or AIPerf result; not read")
            continue
        try:
            got, problems = _READERS[fmt](f)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            notes.append(f"{f}: a {fmt} file that could not be read ({type(exc).__name__}: {exc})")
            continue
        results += got
        notes += problems
    if not results:
        raise ReportFileError(path, "no result that matches a cell: " + ("; ".join(notes) or "no JSON file"))
    return _run(results, notes)


# ------------------------------------------------------------------------------------------ files


def _json_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.json") if p.is_file() and not p.name.endswith(".pytorch.json"))


def _load(path: Path) -> list[Any]:
    """The JSON values of a file: one, or one per line (vLLM's --append-result)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportFileError(path, f"cannot be read: {exc}") from None
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise ReportFileError(path, f"not JSON: {exc.msg} at line {exc.lineno}") from None


def _file_format(path: Path) -> str | None:
    if not path.is_file() or path.suffix != ".json":
        return None
    try:
        docs = _load(path)
    except ReportFileError:
        return None
    doc = docs[0] if docs else None
    if not isinstance(doc, dict):
        return None
    if doc.get("generator") == "pytest-llmload":
        return "llmload"
    if "completed" in doc and "max_concurrency" in doc and "duration" in doc:
        return "vllm-bench"
    if isinstance(doc.get("benchmarks"), list) and isinstance(doc.get("metadata"), dict) \
            and "guidellm_version" in doc["metadata"]:
        return "guidellm"
    if "aiperf_version" in doc or ("input_config" in doc and "request_latency" in doc):
        return "aiperf"
    return None


# --------------------------------------------------------------------------------------- vLLM bench


def _read_vllm(path: Path) -> tuple[list[_Result], list[str]]:
    out, notes = [], []
    for i, doc in enumerate(_load(path)):
        where = f"{path}" + (f" (result {i + 1})" if i else "")
        rate = doc.get("request_rate")
        concurrency = doc.get("max_concurrency")
        completed = int(doc["completed"])
        if rate not in ("inf", None) and not (isinstance(rate, float) and math.isinf(rate)):
            notes.append(f"{where}: request rate {rate}/s, an open loop; only --request-rate inf runs are cells")
            continue
        if completed == 0:
            notes.append(f"{where}: no request completed")
            continue
        users = int(concurrency) if concurrency is not None else int(doc["num_prompts"])
        latencies = _vllm_latencies(doc)
        stats = {
            "e2e": distribution(latencies) if latencies else _from_ms(doc, "e2el", completed),
            "ttft": _from_ms(doc, "ttft", completed),
            "tpot": _from_ms(doc, "tpot", completed),
            "itl": _from_ms(doc, "itl", completed),
            "tokens_per_s_per_user": _vllm_speed(doc, latencies),
        }
        out.append(_Result(
            file=path, fmt="vllm-bench", users=users, prompt_tokens=doc["total_input_tokens"] / completed,
            output_tokens=doc["total_output_tokens"] / completed, completed=completed, failed=int(doc.get("failed") or 0),
            duration_s=float(doc["duration"]), stats=stats, total_tokens_per_s=float(doc["output_throughput"]),
            requests=int(doc["num_prompts"]), model=doc.get("model_id"), when=str(doc.get("date") or ""),
            api="chat" if str(doc.get("backend", "")).endswith("chat") else "completions"))
    return out, notes


def _vllm_latencies(doc: dict[str, Any]) -> list[float]:
    """Per-request E2E of the successful requests, where the file says which they are."""
    lat = doc.get("latencies")
    if not isinstance(lat, list):
        return []
    errors = doc.get("errors")
    if isinstance(errors, list) and len(errors) == len(lat):
        return [float(x) for x, e in zip(lat, errors) if not e]
    return [float(x) for x in lat] if not doc.get("failed") else []


def _vllm_speed(doc: dict[str, Any], latencies: list[float]) -> Distribution | None:
    outs = doc.get("output_lens")
    if not isinstance(outs, list) or doc.get("failed") or len(outs) != len(latencies):
        return None  # per-request output tokens only with --save-detailed
    return distribution(o / t for o, t in zip(outs, latencies) if t > 0)


def _from_ms(doc: dict[str, Any], metric: str, count: int) -> Distribution | None:
    """A Distribution in seconds from vLLM's mean/median/pNN keys in ms; what the file lacks is NaN."""
    if f"mean_{metric}_ms" not in doc:
        return None

    def get(key: str) -> float:
        v = doc.get(key)
        return float(v) / 1000 if isinstance(v, (int, float)) else NAN

    p50 = get(f"p50_{metric}_ms")
    return Distribution(p50=get(f"median_{metric}_ms") if math.isnan(p50) else p50, p90=get(f"p90_{metric}_ms"),
                        p95=get(f"p95_{metric}_ms"), p99=get(f"p99_{metric}_ms"), mean=get(f"mean_{metric}_ms"),
                        min=NAN, max=NAN, count=count)


# ----------------------------------------------------------------------------------------- GuideLLM


def _read_guidellm(path: Path) -> tuple[list[_Result], list[str]]:
    (doc,) = _load(path)
    out, notes = [], []
    for i, bench in enumerate(doc["benchmarks"]):
        strategy = bench["config"]["strategy"]
        kind = strategy.get("type_")
        where = f"{path} benchmark {i + 1} ({kind})"
        if kind == "concurrent":
            users = int(strategy["streams"])
        elif kind == "synchronous":
            users = 1
        else:
            notes.append(f"{where}: a {kind} profile sends at a rate, an open loop; only concurrent and "
                         "synchronous benchmarks are cells")
            continue
        m = bench["metrics"]
        totals = m["request_totals"]
        completed = int(totals["successful"])
        if completed == 0:
            notes.append(f"{where}: no request completed")
            continue
        duration = float(bench["duration"])
        out_tokens = _succ(m, "output_token_count")
        backend = bench["config"].get("backend") or {}
        out.append(_Result(
            file=path, fmt="guidellm", users=users, prompt_tokens=_succ(m, "prompt_token_count")["mean"],
            output_tokens=out_tokens["mean"], completed=completed,
            failed=int(totals.get("errored") or 0) + int(totals.get("incomplete") or 0), duration_s=duration,
            stats={"e2e": _guidellm_dist(m, "request_latency", 1.0), "ttft": _guidellm_dist(m, "time_to_first_token_ms", 1e-3),
                   "tpot": _guidellm_dist(m, "inter_token_latency_ms", 1e-3), "itl": None, "tokens_per_s_per_user": None},
            total_tokens_per_s=float(out_tokens["total_sum"]) / duration if duration > 0 else 0.0,
            requests=int(totals["total"] or completed), model=backend.get("model") if isinstance(backend, dict) else None,
            api="chat" if "chat" in str(backend.get("request_format", "")) else "completions",
            when=str(bench.get("start_time", ""))))
    return out, notes


def _succ(metrics: dict[str, Any], name: str) -> dict[str, Any]:
    value = metrics[name]["successful"]
    if not isinstance(value, dict):
        raise ValueError(f"metrics.{name}.successful is not an object")
    return value


def _guidellm_dist(metrics: dict[str, Any], name: str, scale: float) -> Distribution | None:
    if metrics.get(name) is None:
        return None
    s = _succ(metrics, name)
    pct = s.get("percentiles") or {}
    return Distribution(p50=_num(pct.get("p50"), scale), p90=_num(pct.get("p90"), scale),
                        p95=_num(pct.get("p95"), scale), p99=_num(pct.get("p99"), scale),
                        mean=_num(s.get("mean"), scale), min=_num(s.get("min"), scale),
                        max=_num(s.get("max"), scale), count=int(s.get("count") or 0))


def _num(value: Any, scale: float) -> float:
    return float(value) * scale if isinstance(value, (int, float)) else NAN


# ------------------------------------------------------------------------------------------- AIPerf


_AIPERF_SCALE = {"ms": 1e-3, "sec": 1.0, "s": 1.0, "us": 1e-6, "ns": 1e-9}


def _read_aiperf(path: Path) -> tuple[list[_Result], list[str]]:
    (doc,) = _load(path)
    config = doc.get("input_config") or {}
    users, why = _aiperf_concurrency(config)
    if users is None:
        return [], [f"{path}: {why}; only concurrency runs are cells"]
    completed = int(_avg(doc, "completed_request_count", _avg(doc, "request_count", 0)))
    if completed == 0:
        return [], [f"{path}: no request completed"]
    prompt = doc.get("usage_prompt_tokens") or doc.get("input_sequence_length")
    output = doc.get("usage_completion_tokens") or doc.get("output_sequence_length")
    endpoint = config.get("endpoint") or {}
    models = (config.get("models") or {}).get("items") or [{}]
    errors = sum(int(e.get("count") or 0) for e in doc.get("error_summary") or [] if isinstance(e, dict))
    return [_Result(
        file=path, fmt="aiperf", users=users, prompt_tokens=float(prompt["avg"]),
        output_tokens=float(output["avg"]), completed=completed, failed=errors,
        duration_s=_avg(doc, "benchmark_duration", 0.0),
        stats={"e2e": _aiperf_dist(doc, "request_latency"), "ttft": _aiperf_dist(doc, "time_to_first_token"),
               "tpot": _aiperf_dist(doc, "inter_token_latency"), "itl": _aiperf_dist(doc, "inter_chunk_latency"),
               "tokens_per_s_per_user": _aiperf_dist(doc, "e2e_output_token_throughput")},
        total_tokens_per_s=_avg(doc, "output_token_throughput", 0.0), requests=completed + errors,
        model=models[0].get("name"), api="chat" if endpoint.get("type") == "chat" else "completions",
        when=str(doc.get("start_time") or ""))], []


def _aiperf_concurrency(config: dict[str, Any]) -> tuple[int | None, str]:
    """The profiling phase's concurrency (0.13: input_config.phases; older: input_config.loadgen)."""
    phases = [p for p in config.get("phases") or [] if isinstance(p, dict) and p.get("kind") == "profiling"]
    if phases:
        phase = phases[0]
        if phase.get("type") == "concurrency" and isinstance(phase.get("concurrency"), int):
            return int(phase["concurrency"]), ""
        return None, f"a {phase.get('type')} phase (an open loop or another schedule)"
    loadgen = config.get("loadgen") or {}
    if loadgen.get("request_rate") is not None:
        return None, f"request rate {loadgen['request_rate']}/s, an open loop"
    if isinstance(loadgen.get("concurrency"), int):
        return int(loadgen["concurrency"]), ""
    return None, "no concurrency in input_config"


def _avg(doc: dict[str, Any], name: str, default: float) -> float:
    v = doc.get(name)
    return float(v["avg"]) if isinstance(v, dict) and isinstance(v.get("avg"), (int, float)) else default


def _aiperf_dist(doc: dict[str, Any], name: str) -> Distribution | None:
    m = doc.get(name)
    if not isinstance(m, dict) or not isinstance(m.get("avg"), (int, float)):
        return None
    scale = _AIPERF_SCALE.get(str(m.get("unit")), 1.0)
    return Distribution(p50=_num(m.get("p50"), scale), p90=_num(m.get("p90"), scale), p95=_num(m.get("p95"), scale),
                        p99=_num(m.get("p99"), scale), mean=_num(m.get("avg"), scale), min=_num(m.get("min"), scale),
                        max=_num(m.get("max"), scale), count=int(m.get("count") or 0))


_READERS = {"vllm-bench": _read_vllm, "guidellm": _read_guidellm, "aiperf": _read_aiperf}


# --------------------------------------------------------------------------------------------- run


def _run(results: list[_Result], notes: list[str]) -> RunResult:
    files = list(dict.fromkeys(r.file for r in sorted(results, key=lambda r: (r.when, str(r.file)))))
    cells = [_cell(r, files.index(r.file)) for r in results]
    env: dict[str, Any] = {"generator": sorted({r.fmt for r in results}), "files": [str(f) for f in files]}
    models = {r.model for r in results if r.model}
    if len(models) == 1:
        env["model"] = env["served_model_name"] = models.pop()
    apis = {r.api for r in results if r.api}
    workload: dict[str, Any] = {"api": apis.pop()} if len(apis) == 1 else {}
    rounds = {r.requests / r.users for r in results}
    if len(rounds) == 1 and float(next(iter(rounds))).is_integer():
        workload["rounds"] = int(next(iter(rounds)))
    else:
        notes.append("the results send different numbers of requests per user (or not a whole number): "
                     "the workload's rounds are not compared")
    if workload:
        env["workload"] = workload
    extra = {NOTES_KEY: notes, "sessions": [{"file": str(f)} for f in files]}
    return RunResult(environment=env, cells=cells, extra=extra)


def _cell(r: _Result, session: int) -> CellResult:
    stats = CellStats(
        e2e=r.stats.get("e2e"), ttft=r.stats.get("ttft"), itl=r.stats.get("itl"), tpot=r.stats.get("tpot"),
        tokens_per_s_per_user=r.stats.get("tokens_per_s_per_user"), total_tokens_per_s=r.total_tokens_per_s,
        requests_per_s=r.completed / r.duration_s if r.duration_s > 0 else 0.0, requests_ok=r.completed,
        requests_failed=r.failed, errors={"failed": r.failed} if r.failed else {}, start_spread_s=NAN,
        duration_s=r.duration_s)
    rounds = r.requests / r.users
    return CellResult(users=r.users, prompt_tokens=round(r.prompt_tokens), max_tokens=round(r.output_tokens), ok=True,
                      rounds=int(rounds) if rounds.is_integer() and rounds >= 1 else 1,
                      stats=stats, extra={SOURCE_KEY: {"format": r.fmt, "file": str(r.file),
                                                       "mean_prompt_tokens": r.prompt_tokens,
                                                       "mean_output_tokens": r.output_tokens},
                                          SESSION_KEY: session})
