"""Command-line and ini options: validators and the one frozen `Settings` they resolve into.

Every `parse_*` raises `argparse.ArgumentTypeError`, so a bad command-line value fails at parse time
with pytest's usage error naming the option. Ini values go through the same parsers in
`Settings.from_values`, which names the ini key instead (pytest-timeout's `_validate_timeout(value, where)`).
Precedence: command line > environment (only OPENAI_API_KEY / LLMLOAD_* named below) > ini > default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

from .errors import ConfigError
from .vocabulary import METRICS, parse_gate

# The reference study's matrix.
STUDY_USERS = (1, 2, 4, 8, 16, 32, 64, 128)
STUDY_PROMPT_TOKENS = (31, 63, 119, 296, 480, 822, 2193)


AUTO_FIRST_LOOK = 2  # --llm-repeats auto: the repeats a side has at the first look (gate/sequential.py)


def _fail(message: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(message)


def parse_positive_int(value: str | int) -> int:
    """An integer >= 1."""
    try:
        n = int(str(value).strip())
    except ValueError:
        raise _fail(f"{value!r} is not a whole number") from None
    if n < 1:
        raise _fail(f"{value!r} must be 1 or more")
    return n


def parse_repeats(value: str | int) -> int | str:
    """`auto` (repeat until the gates conclude, see --llm-gate-budget) or a whole number >= 1."""
    if str(value).strip().lower() == "auto":
        return "auto"
    return parse_positive_int(value)


def parse_max_repeats(value: str | int) -> int:
    """A whole number >= 2 (the first look of --llm-repeats auto needs 2 repeats a side)."""
    n = parse_positive_int(value)
    if n < AUTO_FIRST_LOOK:
        raise _fail(f"{value!r} must be {AUTO_FIRST_LOOK} or more")
    return n


def parse_positive_float(value: str | float) -> float:
    """A number > 0 (seconds, rates)."""
    try:
        x = float(str(value).strip())
    except ValueError:
        raise _fail(f"{value!r} is not a number") from None
    if not x > 0 or x != x or x == float("inf"):
        raise _fail(f"{value!r} must be a finite number above 0")
    return x


def parse_int_list(value: str | Sequence[int]) -> tuple[int, ...]:
    """A comma-separated list of positive integers, e.g. `1,2,4,8`; kept in the given order, no duplicates."""
    items = value if not isinstance(value, str) else [v for v in value.replace(" ", ",").split(",") if v]
    if not items:
        raise _fail("an empty list; give comma-separated whole numbers, e.g. 1,2,4")
    out = tuple(parse_positive_int(v) for v in items)
    return tuple(dict.fromkeys(out))


def parse_choice(*choices: str) -> Callable[[str], str]:
    """A validator accepting one of `choices` (case-insensitive)."""

    def parse(value: str) -> str:
        v = str(value).strip().lower()
        if v not in choices:
            raise _fail(f"{value!r} is not one of {', '.join(choices)}")
        return v

    parse.__name__ = "choice"
    return parse


def parse_base_url(value: str) -> str:
    """An http(s) URL of an OpenAI-compatible server, without a trailing /v1."""
    from .control import normalize_base_url  # noqa: PLC0415 - httpx loads only when the option is used

    try:
        return normalize_base_url(str(value))
    except ConfigError:
        raise _fail(f"{value!r} is not an http(s) URL such as http://127.0.0.1:8000") from None


def parse_model(value: str) -> str:
    """A preset name, a local model folder (with config.json) or a hub id (org/name); checked, not built."""
    from .server.presets import resolve_model_name  # noqa: PLC0415 - keep option parsing import-light

    try:
        resolve_model_name(str(value))
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    return str(value).strip()


def parse_gate_text(value: str) -> str:
    """A regression gate such as `e2e_p95:10%` (checked now, used at the end of the session)."""
    try:
        parse_gate(str(value))
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    return str(value).strip()


def parse_cpus(value: str) -> tuple[int, ...]:
    """CPU numbers and ranges, e.g. `3` or `2-3,6`."""
    from .server.placement import parse_cpu_list  # noqa: PLC0415 - keep option parsing import-light

    try:
        return parse_cpu_list(str(value))
    except ValueError as exc:
        raise _fail(f"{value!r}: {exc}") from None


def parse_metric_list(value: str) -> tuple[str, ...]:
    """Report metrics, e.g. `e2e,ttft`."""
    items = [v.strip() for v in str(value).split(",") if v.strip()]
    bad = [v for v in items if v not in METRICS]
    if bad or not items:
        raise _fail(f"{value!r}: metrics are {', '.join(METRICS)}")
    return tuple(items)


def parse_gpus(value: str) -> str:
    """Device indices for CUDA_VISIBLE_DEVICES, e.g. `0,1`."""
    items = [v.strip() for v in str(value).split(",") if v.strip()]
    if not items or not all(v.isdigit() for v in items):
        raise _fail(f"{value!r} is not a comma-separated list of GPU indices such as 0,1")
    return ",".join(items)


EXPORT_FORMATS = ("vllm-bench", "github-benchmark", "bencher")  # report/exports.py writes them


def parse_export_list(value: str) -> tuple[str, ...]:
    """Export formats, e.g. `vllm-bench,bencher`."""
    items = tuple(dict.fromkeys(v.strip().lower() for v in str(value).split(",") if v.strip()))
    bad = [v for v in items if v not in EXPORT_FORMATS]
    if bad or not items:
        raise _fail(f"{value!r}: export formats are {', '.join(EXPORT_FORMATS)}")
    return items


def parse_vllm_install(value: str) -> str:
    """A vLLM install: a Python of an environment with vLLM, that environment's folder or its `vllm`
    executable. Read now (a subprocess of that Python), so a wrong path fails at parse time."""
    from .server.install import resolve_install  # noqa: PLC0415 - keep option parsing import-light

    text = str(value).strip()
    try:
        resolve_install(text, option="")  # argparse / _parse_from name the option
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    return os.path.abspath(os.path.expanduser(text))


def parse_env_pair(value: str) -> tuple[str, str]:
    """`KEY=VALUE` for the server's environment; the value may be empty or hold `=`."""
    key, eq, val = str(value).partition("=")
    key = key.strip()
    if not eq or not key or not (key.replace("_", "a").isalnum() and not key[0].isdigit()):
        raise _fail(f"{value!r} is not KEY=VALUE with a variable name such as VLLM_ATTENTION_BACKEND")
    return key, val


MAX_LOAD_WORKERS = 256  # a bound, so that a typo cannot start thousands of processes


def parse_load_workers(value: str | int) -> int | str:
    """`auto` or a number of load workers (1 .. 256)."""
    if str(value).strip().lower() == "auto":
        return "auto"
    n = parse_positive_int(value)
    if n > MAX_LOAD_WORKERS:
        raise _fail(f"{value!r}: at most {MAX_LOAD_WORKERS} load workers")
    return n


def parse_load_cluster(value: str) -> str:
    """`local` (worker processes of this host) or `ray` (actors of a Ray cluster; Ray must be installed)."""
    import importlib.util  # noqa: PLC0415

    cluster = parse_choice("local", "ray")(value)
    if cluster == "ray" and importlib.util.find_spec("ray") is None:
        raise _fail("ray: Ray is not installed; pip install 'pytest-llmload[ray]'")
    return cluster


@dataclass(frozen=True)
class Settings:
    """Every resolved `--llm-*` option; its field defaults are the options' defaults (their one home)."""

    model: str = "tiny"
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)  # never printed
    served_model_name: str | None = None
    tp: int | None = None
    pp: int | None = None
    gpus: str | None = None
    quantization: str | None = None
    dtype: str | None = None
    max_model_len: int | None = None
    server_arg: tuple[str, ...] = ()
    device: str = "auto"
    host: str = "127.0.0.1"
    startup_timeout: float = 600.0
    cache_dir: str | None = None
    users: tuple[int, ...] = STUDY_USERS
    prompt_tokens: tuple[int, ...] = STUDY_PROMPT_TOKENS
    max_tokens: int = 100
    rounds: int = 1
    api: str = "completions"
    request_timeout: float = 600.0
    shared_prefix: bool = False
    telemetry_interval: float = 0.1
    client_cpus: tuple[int, ...] | None = None
    allow_invalid: bool = False
    slo_file: str | None = None
    report_dir: str = "llmload-report"
    report_metrics: tuple[str, ...] = ("e2e",)
    save_baseline: str | None = None
    baseline: str | None = None
    compare_fail: tuple[str, ...] = ()
    compare_force: bool = False
    reference: str | None = None
    load_workers: int | str = "auto"
    load_cluster: str = "local"
    ray_address: str | None = None
    repeats: int | str | None = None  # "auto": until the gates conclude; None: 3 when gating, else 1
    max_repeats: int = 10  # --llm-repeats auto: a side's repeats of a cell at most
    gate_budget: float = 30.0  # --llm-repeats auto: minutes of repeats after the tests at most
    compare_strict: bool = False
    candidate_model: str | None = None
    candidate_server_arg: tuple[str, ...] = ()
    candidate_base_url: str | None = None
    # A/B as an upgrade is judged: sides taking turns, warm servers, baselines of several starts
    ab_mode: str = "auto"
    warmup: str | None = None  # None: "cell" when gating (comparing, saving a baseline, a candidate), else "none"
    baseline_starts: int = 1
    history: str | None = None
    history_label: str | None = None
    export: tuple[str, ...] = ()
    # Workloads production sees (issue 21)
    workload: str | None = None
    workload_speed: float = 1.0
    vllm: str | None = None  # None: the running Python
    server_env: tuple[tuple[str, str], ...] = ()
    candidate_vllm: str | None = None
    candidate_server_env: tuple[tuple[str, str], ...] = ()
    candidate_gpus: str | None = None

    @classmethod
    def from_values(cls, cli: Callable[[str], Any], ini: Callable[[str], Any],
                    environ: dict[str, str] | None = None) -> Settings:
        """Resolve all options given getters for command-line and ini values (by dest / ini name)."""
        env = dict(os.environ if environ is None else environ)
        values = {o.field: resolve(o, cli(o.dest), ini(o.ini), env) for o in OPTIONS}
        return cls(**values)

    @property
    def has_candidate(self) -> bool:
        """Whether a candidate server is defined (an A/B comparison in this session)."""
        return bool(self.candidate_model or self.candidate_server_arg or self.candidate_base_url
                    or self.candidate_vllm or self.candidate_server_env or self.candidate_gpus)

    @property
    def gating(self) -> bool:
        """Whether the session compares or saves (a baseline, or a candidate): verdicts need repeats."""
        return bool(self.save_baseline or self.baseline or self.has_candidate)

    @property
    def effective_warmup(self) -> str:
        """--llm-warmup, else `cell` when gating (a cold first cell is no repeat of a warm one), else `none`."""
        return self.warmup or ("cell" if self.gating else "none")

    @property
    def auto_repeats(self) -> bool:
        """--llm-repeats auto: repeat gated cells until their verdicts conclude (bounded)."""
        return self.repeats == "auto"

    @property
    def effective_repeats(self) -> int:
        """--llm-repeats, else REPEATS_WHEN_COMPARING when a baseline is saved or compared or a candidate
        is given (a verdict needs the spread between repeats), else 1."""
        if self.repeats == "auto":
            return AUTO_FIRST_LOOK
        if isinstance(self.repeats, int):
            return self.repeats
        comparing = self.save_baseline or self.baseline or self.has_candidate
        return REPEATS_WHEN_COMPARING if comparing else 1

    def candidate_settings(self) -> Settings:
        """The settings of the candidate's own session: started like this one, with the candidate's model,
        server arguments, vLLM install, server environment and GPUs in place of --llm-model /
        --llm-server-arg / --llm-vllm / --llm-server-env / --llm-gpus where given, or attached to
        --llm-candidate-base-url. It writes its reports under <report dir>/candidate and gates nothing."""
        if self.candidate_base_url is not None:
            model, served = self.model, self.candidate_model  # None: the server's first model
        elif self.candidate_model is not None:
            model, served = self.candidate_model, None
        else:
            model, served = self.model, self.served_model_name
        return replace(
            self, model=model, base_url=self.candidate_base_url, served_model_name=served,
            server_arg=self.candidate_server_arg or self.server_arg,
            vllm=self.candidate_vllm or self.vllm, server_env=self.candidate_server_env or self.server_env,
            gpus=self.candidate_gpus or self.gpus,
            report_dir=str(Path(self.report_dir) / CANDIDATE_REPORT_DIR),
            save_baseline=None, baseline=None, compare_fail=(), reference=None, repeats=self.effective_repeats,
            warmup=self.effective_warmup, baseline_starts=1, history=None, history_label=None, export=(),
            candidate_model=None, candidate_server_arg=(), candidate_base_url=None,
            candidate_vllm=None, candidate_server_env=(), candidate_gpus=None,
        )

    def cache_path(self) -> Path:
        """The cache folder: --llm-cache-dir (or $LLMLOAD_CACHE_DIR), else ~/.cache/pytest-llmload."""
        from .server.tiny import default_cache_dir  # noqa: PLC0415

        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()


REPEATS_WHEN_COMPARING = 3
CANDIDATE_REPORT_DIR = "candidate"
_DEFAULTS = {f.name: f.default for f in fields(Settings)}


class _Parser(Protocol):
    def __call__(self, value: str, /) -> Any: ...


@dataclass(frozen=True)
class Option:
    """One `--llm-*` option and its ini mirror; its default is the `Settings` field of the same name."""

    name: str  # without the leading dashes and prefix, e.g. "users"
    help: str
    parse: _Parser | None = None
    metavar: str | None = None
    kind: str = "value"  # "value", "append" or "flag"
    env: str | None = None
    shown_default: str | None = None  # the help's "Default: ..." when the Settings default needs words

    @property
    def flag(self) -> str:
        return f"--llm-{self.name}"

    @property
    def field(self) -> str:
        """The Settings field."""
        return self.name.replace("-", "_")

    @property
    def dest(self) -> str:
        return f"llm_{self.field}"

    @property
    def ini(self) -> str:
        return self.dest

    @property
    def default(self) -> Any:
        return _DEFAULTS[self.field]

    @property
    def help_text(self) -> str:
        """The help as argparse prints it: argparse %-formats help strings, so a literal % is written %%."""
        default = self.shown_default or ("off" if self.kind == "flag" else repr(self.default))
        return f"{self.help} Default: {default}.".replace("%", "%%")


OPTIONS: tuple[Option, ...] = (
    # --- which server
    Option("model", "Preset name (see --llm-list-presets), hub id, or local model directory.",
           parse_model, "NAME", env="LLMLOAD_MODEL"),
    Option("base-url", "Attach to an already running OpenAI-compatible server instead of starting vLLM.",
           parse_base_url, "URL", env="LLMLOAD_BASE_URL"),
    Option("api-key", "API key for --llm-base-url (else $OPENAI_API_KEY). Never written to logs or reports.",
           str, "KEY", env="OPENAI_API_KEY"),
    Option("served-model-name", "Model name to request (default: the preset's or the server's first model).",
           str, "NAME"),
    # --- how vLLM is started (mirrors vllm serve flags)
    Option("tp", "Tensor parallel size (vllm --tensor-parallel-size). Default: the preset's.",
           parse_positive_int, "N"),
    Option("pp", "Pipeline parallel size (vllm --pipeline-parallel-size). Default: the preset's.",
           parse_positive_int, "N"),
    Option("gpus", "GPU indices for the server (CUDA_VISIBLE_DEVICES), e.g. 0,1.", parse_gpus, "LIST"),
    Option("quantization", "vllm --quantization, e.g. awq, gptq. Default: the preset's.", str, "METHOD"),
    Option("dtype", "vllm --dtype, e.g. float16, bfloat16. Default: the preset's (float32 on CPU).",
           parse_choice("auto", "half", "float16", "bfloat16", "float", "float32"), "DTYPE"),
    Option("max-model-len", "vllm --max-model-len (context length). Default: the preset's.",
           parse_positive_int, "TOKENS"),
    Option("server-arg", "Extra argument passed verbatim to vllm serve (repeatable), e.g. "
           "--llm-server-arg=--distributed-executor-backend=ray.", str, "ARG", "append"),
    Option("device", "Where vLLM runs: auto (CPU build of vLLM -> cpu), cpu or gpu.",
           parse_choice("auto", "cpu", "gpu"), "DEVICE"),
    Option("host", "Address the started server binds to.", str, "ADDR"),
    Option("startup-timeout", "Seconds to wait for the started server to become ready.",
           parse_positive_float, "SECONDS"),
    Option("cache-dir", "Where the tiny model and vLLM's compile cache are kept.", str, "DIR",
           env="LLMLOAD_CACHE_DIR"),
    # --- the workload
    Option("users", "Simultaneous users of the matrix, comma-separated.", parse_int_list, "LIST"),
    Option("prompt-tokens", "Prompt sizes in tokens of the matrix, comma-separated.", parse_int_list, "LIST"),
    Option("max-tokens", "Tokens each request generates (ignore_eos, so exactly this many).",
           parse_positive_int, "N"),
    Option("rounds", "Requests each user sends one after another in a cell.", parse_positive_int, "N"),
    Option("api", "Endpoint: completions (/v1/completions) or chat (/v1/chat/completions).",
           parse_choice("completions", "chat"), "API"),
    Option("request-timeout", "Seconds before one request counts as failed (timeout).",
           parse_positive_float, "SECONDS"),
    Option("shared-prefix", "Let prompts share a prefix (exercises prefix caching; default: all distinct).",
           kind="flag"),
    Option("telemetry-interval", "Seconds between GPU telemetry samples.", parse_positive_float, "SECONDS"),
    # --- measuring truthfully
    Option("client-cpus", "CPUs the measuring client runs on, e.g. 3 or 2-3. Default: with vLLM started on "
           "the CPU, the last core (the server's whole process tree gets the others); otherwise not pinned.",
           parse_cpus, "LIST"),
    Option("allow-invalid", "Report objectives and gates on cells the client could not measure truthfully "
           "(invalid cells) as warnings instead of errors.", kind="flag"),
    # --- objectives
    Option("slo-file", "TOML file of objectives ([[slo]] tables) for this deployment.", str, "PATH"),
    # --- reports and gates
    Option("report-dir", "Folder for llmload.json, CSV, Markdown and report.html.", str, "DIR"),
    Option("report-metrics", "Matrices printed at the end of the session.", parse_metric_list, "LIST"),
    Option("save-baseline", "Save this session into a baseline file (a baseline of the same deployment gains "
           "this session; the last 10 are kept).", str, "PATH"),
    Option("baseline", "Compare this run against a saved baseline and show per-cell deltas: a baseline file, a "
           "history (PATH.sqlite[:LABEL]), or results of vllm bench serve (a file, or a folder of them as "
           "repeats), GuideLLM (benchmarks.json) or AIPerf (profile_export_aiperf.json).", str, "PATH"),
    Option("compare-fail", "Fail the session on a regression beyond a threshold, e.g. e2e_p95:10% "
           "(repeatable; higher latency / lower throughput is worse).", parse_gate_text, "METRIC:PCT", "append"),
    Option("compare-force", "Compare with a baseline of another model or layout anyway.", kind="flag"),
    Option("reference", "Print the run beside a reference matrix: a baseline/llmload.json path, a history, "
           "results of vllm bench serve, GuideLLM or AIPerf (as for --llm-baseline), or a study table (I..VII).",
           str, "PATH|TABLE"),
    # --- scaling the load out (issue 14): load workers on many cores, or on many hosts through Ray
    Option("load-workers", "Load workers a cell's users (or open-loop arrivals) are dealt over, each an event loop "
           "on its own core: a number, or auto (locally: one per core the client may use after its isolation "
           "from the server, at most 8, so 1 with a single client core; with --llm-load-cluster ray: one actor "
           "per node).", parse_load_workers, "N|auto"),
    Option("load-cluster", "Where load workers run: local (processes of this host) or ray (actors of a Ray "
           "cluster; pip install 'pytest-llmload[ray]').", parse_load_cluster, "local|ray"),
    Option("ray-address", "The Ray cluster for --llm-load-cluster ray, as for ray.init(address=...), e.g. "
           "ray://head:10001 or auto (else $RAY_ADDRESS; with neither, a local Ray is started).", str, "ADDRESS",
           env="RAY_ADDRESS"),
    # --- repeats and A/B comparisons (verdicts from the spread between repeats)
    Option("repeats", "Measure every cell N times, spread over the session (the matrix in N passes; cells "
           "measured once by tests get their other repeats after the last test). Verdicts come from the "
           "spread between repeats; with fewer than 2 they are inconclusive. auto: 2, then one more repeat a "
           "side of each gated cell whose verdict is not yet conclusive, until every gate concludes or "
           "--llm-max-repeats or --llm-gate-budget is spent (a stopping rule that keeps false alarms at most "
           "5%% over all looks).", parse_repeats, "N|auto",
           shown_default=f"{REPEATS_WHEN_COMPARING} when a baseline is saved or compared or a candidate is given, "
           "else 1"),
    Option("max-repeats", "With --llm-repeats auto: a side's repeats of a cell at most.", parse_max_repeats, "N",
           shown_default="10"),
    Option("gate-budget", "With --llm-repeats auto: minutes the repeats after the last test may take at most "
           "(no block is started that would not end within it).", parse_positive_float, "MINUTES",
           shown_default="30"),
    Option("compare-strict", "Fail the session on an inconclusive verdict too (not only on a regression "
           "or an invalid measurement).", kind="flag"),
    Option("candidate-model", "A/B in one session: the candidate server's model (preset, hub id or folder; "
           "with --llm-candidate-base-url, the served name to request). Default: --llm-model.",
           parse_model, "NAME"),
    Option("candidate-server-arg", "A/B in one session: the candidate's extra vllm serve arguments, in place of "
           "--llm-server-arg (repeatable), e.g. --llm-candidate-server-arg=--max-num-seqs=64.",
           str, "ARG", "append"),
    Option("candidate-base-url", "A/B in one session: attach to a running candidate server instead of "
           "starting one.", parse_base_url, "URL"),
    Option("ab-mode", "A/B in one session: alternate (only one side's server runs at a time: stop A, start B, "
           "cells measured in blocks per start, the sides' order alternating A B B A ...), together (both up at "
           "once), or auto (alternate when both sides would share compute: the same GPUs, or on the CPU the same "
           "cores; together when they share nothing or a side is attached). The report says which and why.",
           parse_choice("auto", "alternate", "together"), "auto|alternate|together"),
    Option("warmup", "After every start of a server, the first measurement of each cell is preceded by an "
           "unrecorded run of the same cell (cell), or not (none). The cold run is reported as the cost of a "
           "cold start, never mixed into the repeats.", parse_choice("none", "cell"), "none|cell",
           shown_default="cell when comparing, saving a baseline or with a candidate, else none"),
    Option("baseline-starts", "With --llm-save-baseline and a server the session starts: start it N times, "
           "each start one session of the baseline (fresh placement, caches, compilation), so that the baseline "
           "can judge from its first save.", parse_positive_int, "N"),
    # --- history, trends, exports (issue 20); imports go through --llm-baseline and --llm-reference
    Option("history", "SQLite file every session appends to (provenance, per-repeat statistics, verdicts); "
           "report.html then shows each cell's trend over its sessions of the same deployment. As "
           "--llm-baseline PATH[:LABEL] it gives the last 10 such sessions as the baseline.", str, "PATH"),
    Option("history-label", "Tag this session in the history (a branch, a pipeline), e.g. main.", str, "LABEL"),
    Option("export", "Also write these formats into the report folder, comma-separated: vllm-bench (result "
           "files of vllm bench serve, one folder per cell, one file per repeat), github-benchmark "
           "(github-action-benchmark custom tools), bencher (Bencher Metric Format).", parse_export_list,
           "FORMATS", shown_default="none"),
    # --- each side's install and environment (issue 19): which vLLM, which variables, which GPUs
    Option("vllm", "The vLLM install the started server runs from: the Python of an environment where vLLM "
           "is installed, that environment's folder, or its vllm executable. Its vLLM and torch versions are "
           "read from it and recorded.", parse_vllm_install, "PATH", shown_default="the running Python"),
    Option("server-env", "Environment variable for the started server (repeatable), e.g. "
           "--llm-server-env=VLLM_ATTENTION_BACKEND=FLASHINFER; set last, over the plugin's own.",
           parse_env_pair, "KEY=VALUE", "append"),
    Option("candidate-vllm", "A/B in one session: the candidate's vLLM install (as --llm-vllm), e.g. a second "
           "environment with another vLLM version.", parse_vllm_install, "PATH", shown_default="--llm-vllm"),
    Option("candidate-server-env", "A/B in one session: the candidate server's environment variables, in place "
           "of --llm-server-env (repeatable).", parse_env_pair, "KEY=VALUE", "append",
           shown_default="--llm-server-env"),
    Option("candidate-gpus", "A/B in one session: the candidate server's GPU indices (CUDA_VISIBLE_DEVICES).",
           parse_gpus, "LIST", shown_default="--llm-gpus"),
)
OPTIONS_BY_DEST = {o.dest: o for o in OPTIONS}


def parse_workload(value: str) -> str:
    """A JSONL workload file that reads and checks (a bad line fails here, naming it)."""
    from .load.trace import WorkloadError, load_workload  # noqa: PLC0415 - only with --llm-workload

    try:
        load_workload(value)
    except WorkloadError as exc:
        raise _fail(str(exc)) from None
    return value


OPTIONS += (
    # --- workloads production sees (issue 21): a recorded trace to replay
    Option("workload", "JSONL trace to replay (one request a line: prompt_tokens or prompt, output_tokens, "
           "optional arrival_s, conversation_id, turn): what llm_load.replay() sends without a path, and what "
           "objectives with workload=NAME (the file's stem) measure. Checked when read: a bad line fails the "
           "session naming it.", parse_workload, "PATH"),
    Option("workload-speed", "Open-loop replay of --llm-workload: the trace's arrival times divided by this "
           "(2: twice the rate).", parse_positive_float, "X"),
)
OPTIONS_BY_DEST = {o.dest: o for o in OPTIONS}


def _ini_value(option: Option, raw: Any) -> Any:
    """Convert an ini value (string or list of lines) to what the command line would have produced."""
    if option.kind == "flag":
        return str(raw).strip().lower() in ("1", "true", "yes", "on")
    if option.kind == "append":
        lines = raw if isinstance(raw, list) else str(raw).splitlines()
        parse = option.parse or str
        return tuple(parse(line.strip()) for line in lines if line.strip())
    return option.parse(raw) if option.parse else raw


def resolve(option: Option, cli: Any, ini: Any, environ: dict[str, str]) -> Any:
    """One option's value: command line > environment > ini > default; errors name where the value came from."""
    if cli not in (None, (), [], False):
        return tuple(cli) if option.kind == "append" else cli
    if option.env and environ.get(option.env):
        return _parse_from(option, environ[option.env], f"environment variable {option.env}")
    if ini not in (None, "", []):
        return _parse_from(option, ini, f"ini option {option.ini}")
    return option.default


def _parse_from(option: Option, raw: Any, where: str) -> Any:
    try:
        return _ini_value(option, raw)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{where} (for {option.flag}): {exc}") from None
