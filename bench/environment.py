"""Where a row was measured: library versions, CPU and GPU, threads, commit and host."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path

import numpy as np


def _git_commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=root,
                               capture_output=True, timeout=10).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{sha}+dirty" if sha and dirty else sha


def _cpu_name() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} cpus)"


def _gpu_name() -> str:
    # The driver's files, not torch.cuda: the zygote must not initialise CUDA.
    names = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        for line in info.read_text().splitlines():
            if line.startswith("Model:"):
                names.append(line.split(":", 1)[1].strip())
    return ", ".join(names)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(threads: int) -> dict:
    import torch

    return {"torch_version": torch.__version__, "jax_version": _version("jax"),
            "numpy_version": np.__version__, "python_version": platform.python_version(),
            "cpu": _cpu_name(), "gpu": _gpu_name(), "threads": threads,
            "commit": _git_commit(), "hostname": socket.gethostname()}


def machine_kind(cpu, gpu, device) -> str:
    """The kind of machine a row was measured on: hosts of one kind are interchangeable, so
    their rows are ranked together, and rows of different kinds never are. The CPU model and
    its CPU count (the `cpu` column); on a GPU also the GPU's name, which a CPU row leaves out
    (a host's GPU does not time its CPU cases)."""
    cpu = cpu if isinstance(cpu, str) and cpu else "unknown CPU"
    if device == "cuda":
        return f"{gpu if isinstance(gpu, str) and gpu else 'unknown GPU'} with {cpu}"
    return cpu
