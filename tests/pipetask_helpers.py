"""Running the package's command-line tools and ``pipetask run`` as real processes, for integration tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sim_fixtures import TinyRepo

__all__ = ["BIN", "pipetask", "run"]

BIN = Path(sys.executable).parent
"""The virtual environment's scripts (``pipetask``, ``deepdisc-model``...)."""


def run(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a command with this environment; with ``check``, fail with its output when it fails."""
    result = subprocess.run(args, capture_output=True, text=True, env=os.environ.copy(), timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def pipetask(
    repo: TinyRepo,
    inputs: list[str],
    output: str,
    pipeline: str,
    *extra: str,
    check: bool = True,
    timeout: float = 900,
) -> subprocess.CompletedProcess:
    """``pipetask run`` of ``pipeline`` on the repository's skymap, one process, dataset types registered."""
    return run(
        str(BIN / "pipetask"), "run", "-b", repo.root, "-i", ",".join(inputs), "-o", output, "-p", pipeline,
        "-d", f"skymap='{repo.skymap}'", "-j", "1", "--register-dataset-types", *extra,
        check=check, timeout=timeout,
    )  # fmt: skip
