"""What makes two runs comparable: the facts of each run's environment, and what differs between two.

A fact is either part of the *deployment* (model and weights, parallel layout, quantization, dtype, the
hardware, the workload's shape): runs that differ there measure different things, and a comparison
with a baseline is refused unless forced. Or it is *context* (vLLM version, server flags, driver, CUDA,
torch version, placement of the client, plugin version, commit, host): a difference is listed beside the verdicts,
because it may explain them, but it is what an upgrade gate is for, so it never refuses. An A/B
comparison within one session refuses nothing: the candidate is meant to differ.

A fact known on one side only is no difference (older baselines lack newer facts), except the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..observe.environment import server_flags

# The layout facts of the first baselines, read at the top level or from a "server_args" mapping.
LAYOUT_KEYS = ("model", "served_model_name", "tensor_parallel_size", "pipeline_parallel_size",
               "quantization", "dtype", "gpu_names")


@dataclass(frozen=True, slots=True)
class Difference:
    """One fact that differs: its value in the run judged (`now`) and in the reference (`then`)."""

    key: str
    now: Any
    then: Any
    deployment: bool

    def describe(self, now_name: str = "now", then_name: str = "in the baseline") -> str:
        if self.now is None or self.then is None:
            return f"{self.key} is known on one side only: {self.now!r} {now_name}, {self.then!r} {then_name}"
        return f"{self.key} differs: {self.now!r} {now_name}, {self.then!r} {then_name}"

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "now": self.now, "then": self.then, "deployment": self.deployment}


def layout(environment: dict[str, Any]) -> dict[str, Any]:
    """The fields of an environment that identify the deployment (see LAYOUT_KEYS), where present.

    Looked up at the top level, then in a "server_args" mapping; GPU names also from a "gpus" list.
    """
    server_args = environment.get("server_args")
    nested = server_args if isinstance(server_args, dict) else {}
    out = {k: environment.get(k, nested.get(k)) for k in LAYOUT_KEYS}
    if out["gpu_names"] is None and isinstance(environment.get("gpus"), list):
        out["gpu_names"] = [g.get("name") if isinstance(g, dict) else g for g in environment["gpus"]] or None
    return {k: v for k, v in out.items() if v is not None}


def _nested(*path: str) -> Callable[[dict[str, Any]], Any]:
    def read(env: dict[str, Any]) -> Any:
        value: Any = env
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    return read


def _flags(env: dict[str, Any]) -> Any:
    argv = env.get("server_args")
    return server_flags(argv) if isinstance(argv, list) and argv else None


PLACEMENT_PLAN = ("policy", "client_cpus", "server_cpus", "omp_threads_bind", "server_nice")


def _placement(env: dict[str, Any]) -> Any:
    """Where the client and the server were put (the plan, not the pids and threads seen this time)."""
    placed = env.get("placement")
    if not isinstance(placed, dict):
        return None
    return {k: placed[k] for k in PLACEMENT_PLAN if k in placed} or None


def _cpu_only(read: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    """The CPU is the hardware of a run without GPUs; beside GPUs it is context (see `_CPU_CONTEXT`)."""
    return lambda env: None if layout(env).get("gpu_names") else read(env)


def _beside_gpus(read: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    return lambda env: read(env) if layout(env).get("gpu_names") else None


# (shown name, reader, deployment?) in the order differences are listed.
FACTS: tuple[tuple[str, Callable[[dict[str, Any]], Any], bool], ...] = (
    *((k, (lambda key: lambda env: layout(env).get(key))(k), True) for k in LAYOUT_KEYS),
    ("model_weights", _nested("model_weights", "digest"), True),
    ("cpu_model", _cpu_only(_nested("cpu_model")), True),
    ("cpu_count", _cpu_only(_nested("cpu_count")), True),
    ("workload.api", _nested("workload", "api"), True),
    ("workload.rounds", _nested("workload", "rounds"), True),
    ("workload.shared_prefix", _nested("workload", "shared_prefix"), True),
    ("vllm_version", _nested("vllm_version"), False),
    ("torch_version", _nested("torch_version"), False),
    ("server_flags", _flags, False),
    ("driver_version", _nested("driver_version"), False),
    ("cuda_version", _nested("cuda_version"), False),
    ("cpu_model (beside the GPUs)", _beside_gpus(_nested("cpu_model")), False),
    ("placement", _placement, False),
    ("plugin_version", _nested("plugin_version"), False),
    ("git_commit", _nested("git_commit"), False),
    ("host", _nested("host"), False),
)


def facts(environment: dict[str, Any]) -> dict[str, Any]:
    """The comparable facts of one environment, by shown name (those not recorded are left out)."""
    out = {name: read(environment) for name, read, _ in FACTS}
    return {k: v for k, v in out.items() if v is not None}


def differences(now: dict[str, Any], then: dict[str, Any]) -> list[Difference]:
    """Every fact that differs between two environments, deployment facts first."""
    out = []
    for name, read, deployment in FACTS:
        a, b = read(now), read(then)
        if (a is not None and b is not None and a != b) or (name == "model" and (a is None) != (b is None)):
            out.append(Difference(name, a, b, deployment))
    return sorted(out, key=lambda d: not d.deployment)
