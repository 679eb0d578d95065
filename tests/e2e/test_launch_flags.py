"""Every `vllm serve` command line we generate is parsed by vLLM's own parser, so a misspelled or
renamed flag fails here, not on the GPU box. The CPU build of vLLM ships the same parser as the CUDA
one. No server is started: this needs vLLM installed, not the machine lock."""

from __future__ import annotations

import argparse
import warnings
from dataclasses import replace

import pytest

from pytest_llmload.server.presets import PRESETS, ModelChoice
from pytest_llmload.server.spec import ServerSpec, build_argv, spec_from_choice


@pytest.fixture(scope="module")
def vllm_serve() -> tuple[argparse.ArgumentParser, object]:
    """The parser `vllm serve` uses, built the way vLLM's CLI main builds it, and the subcommand."""
    with warnings.catch_warnings():  # importing vLLM's server modules warns about torch APIs
        warnings.simplefilter("ignore")
        import vllm.entrypoints.cli.serve as serve
        from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm")  # type: ignore[no-untyped-call]
    subparsers = parser.add_subparsers(dest="subparser")
    (cmd,) = serve.cmd_init()
    cmd.subparser_init(subparsers).set_defaults(dispatch_function=cmd.cmd)
    return parser, cmd


def _specs() -> list[tuple[str, ServerSpec]]:
    out = []
    for name, preset in PRESETS.items():
        model = "/models/tiny" if not preset.model else preset.model
        spec = spec_from_choice(ModelChoice(model, name, preset))
        for device in ("cpu", "gpu"):
            out.append((f"{name}-{device}", replace(spec, device=device, gpus="0,1" if device == "gpu" else None)))
    return out


@pytest.mark.parametrize("name, spec", _specs(), ids=[n for n, _ in _specs()])
def test_every_preset_command_line_parses_with_vllms_own_parser(vllm_serve, name: str, spec: ServerSpec) -> None:
    parser, cmd = vllm_serve
    argv = build_argv(spec, port=8123)
    assert argv[1:4] == ["-m", "vllm.entrypoints.cli.main", "serve"]
    args = parser.parse_args(argv[3:])  # SystemExit (exit 2) on an unknown flag or a bad value
    cmd.validate(args)  # vLLM's own checks before it loads anything
    assert args.model_tag == spec.model and args.port == 8123 and args.served_model_name == [spec.served_model_name]
    # argparse accepts a prefix of a flag; what we write must be the flag itself, as vLLM names it.
    known = set(_option_strings(parser, "serve"))
    written = [a.split("=", 1)[0] for a in argv[4:] if a.startswith("--")]
    assert [f for f in written if f not in known] == []
    if spec.device == "cpu":
        assert args.enforce_eager and args.kv_cache_memory_bytes == spec.kv_cache_bytes
    if spec.quantization:
        assert args.quantization == spec.quantization


def test_a_misspelled_flag_is_caught(vllm_serve) -> None:
    parser, _ = vllm_serve
    spec = _specs()[0][1]
    with pytest.raises(SystemExit):
        parser.parse_args([*build_argv(spec, 8123)[3:], "--kv-cache-memory-byte-count", "1"])
    assert "--max-num-seq" not in _option_strings(parser, "serve")  # a prefix parses, and the test above refuses it


def _option_strings(parser: argparse.ArgumentParser, sub: str) -> list[str]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(action.choices[sub]._option_string_actions)
