"""The dependency lock and its watch: write constraints.txt, check an environment against it, and try the newest
(or the oldest) versions our bounds allow in a throwaway venv to see what moved and what broke.

    python -m guardforge.tools.deps lock      # resolve the newest set within pyproject's bounds -> constraints.txt
    python -m guardforge.tools.deps check     # this environment against constraints.txt, and feature conflicts
    python -m guardforge.tools.deps latest    # newest within bounds in a fresh venv: what moved, what broke
    python -m guardforge.tools.deps lowest    # every direct dependency at its lower bound: do our floors hold?

Only pip and the standard library: this must run before (and whatever) the rest installs.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import tomllib
from datetime import date
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "constraints.txt"
# The README's install: torch pinned so that pip takes the CPU wheel where no GPU build is installed.
TORCH = "torch==2.13.0"
TARGET = ".[dev]"


def direct_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[Requirement]:
    """Runtime and dev requirements, as pyproject.toml states them."""
    project = tomllib.loads(pyproject.read_text())["project"]
    return [Requirement(line) for line in [*project["dependencies"], *project["optional-dependencies"]["dev"]]]


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """Canonical name -> pinned version."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.strip()
    return pins


def _public(version: str) -> str:
    # torch's CPU wheel is 2.13.0+cpu; the lock says 2.13.0 so a CUDA build of the same release satisfies it too.
    return Version(version).public


def resolve(python: str = sys.executable, constraints: list[str] = (), extra: list[str] = ()) -> dict[str, str]:
    """What pip would install into an empty environment for the README's command: name -> version."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                   "--report", str(report), TORCH, "-e", TARGET, *extra]
        for path in constraints:
            command += ["-c", path]
        subprocess.run(command, cwd=ROOT, check=True)
        items = json.loads(report.read_text())["install"]
    return {item["metadata"]["name"]: _public(item["metadata"]["version"]) for item in items
            if canonicalize_name(item["metadata"]["name"]) != "guardforge"}


def write_lock(pins: dict[str, str], path: Path = LOCK) -> None:
    header = [
        "# The tested set: every runtime and test dependency of guardforge, pinned.",
        f"# Resolved {date.today().isoformat()} on CPython {platform.python_version()}, {sys.platform} "
        f"{platform.machine()}, by: python -m guardforge.tools.deps lock",
        "# Used as: pip install torch==2.13.0 -c constraints.txt -e \".[dev]\" (the README's set-up).",
        "# A constraint only pins a package that something asks for: platform-only packages stay as they are.",
    ]
    lines = [f"{name}=={version}" for name, version in sorted(pins.items(), key=lambda kv: canonicalize_name(kv[0]))]
    path.write_text("\n".join([*header, *lines]) + "\n")


def installed_versions(python: str = sys.executable) -> dict[str, str]:
    out = subprocess.run([python, "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
                         check=True, capture_output=True, text=True).stdout
    return {canonicalize_name(p["name"]): _public(p["version"]) for p in json.loads(out)}


def differences(pins: dict[str, str], versions: dict[str, str]) -> list[tuple[str, str, str]]:
    """(name, locked, found) for each locked package whose version differs; found is 'missing' when absent."""
    found = []
    for name, locked in sorted(pins.items()):
        have = versions.get(name)
        if have != locked:
            found.append((name, locked, have or "missing"))
    return found


def held_back(requirements: list[Requirement], python: str = sys.executable) -> list[tuple[str, str, str]]:
    """(name, our bound, newest release) for each upper-bounded requirement whose newest release it excludes."""
    found = []
    for req in requirements:
        if not any(spec.operator in ("<", "<=", "==", "~=") for spec in req.specifier):
            continue
        newest = resolve_single(req.name, python)
        if newest and not req.specifier.contains(newest, prereleases=False):
            found.append((req.name, str(req.specifier), newest))
    return found


def resolve_single(name: str, python: str = sys.executable) -> str | None:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        done = subprocess.run([python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps",
                               "--quiet", "--report", str(report), name], capture_output=True, text=True)
        if done.returncode:
            return None
        items = json.loads(report.read_text())["install"]
    return items[0]["metadata"]["version"] if items else None


def feature_conflicts() -> list[str]:
    """The combinations our features need, as the features check them before use."""
    from guardforge.dependencies import lora_conflicts

    return [f"LoRA: {problem}" for problem in lora_conflicts()]


def _venv(folder: Path) -> str:
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = str(folder / "bin" / "python")
    # The pip a venv is born with can be years old; its resolver gives up where a current one does not.
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--upgrade", "pip"],
                   check=True)
    return python


def trial(kind: str, folder: Path | None, pytest_args: list[str], lift_upper: bool = False) -> int:
    """Install the README's set-up into a fresh venv with the newest (or lowest) versions our bounds allow, then
    report what differs from the lock, the feature checks, and the tests that fail. Exit 1 if anything broke.

    With `lift_upper` the newest release of each package an upper bound holds back goes in too (pip warns that
    guardforge asks otherwise): whether the break that bound is for is still there."""
    requirements = direct_requirements()
    with tempfile.TemporaryDirectory() as tmp:
        folder = folder or Path(tmp) / f"venv-{kind}"
        python = _venv(folder)
        constraints = []
        if kind == "lowest":
            floors = Path(tmp) / "floors.txt"
            pins = {req.name: _floor(req) for req in requirements if canonicalize_name(req.name) != "torch"}
            floors.write_text("".join(f"{name}=={version}\n" for name, version in pins.items() if version))
            print("[deps] floors: " + ", ".join(f"{name}=={version}" for name, version in pins.items() if version))
            constraints = ["-c", str(floors)]
        print(f"[deps] installing the {kind} set into {folder} ...", flush=True)
        install = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                                  TORCH, *constraints, "-e", TARGET], cwd=ROOT)
        if install.returncode:
            print(f"[deps] BROKE: the {kind} set does not install (pip exit {install.returncode})")
            return 1
        if kind == "latest":
            for name, bound, newest in held_back(requirements, python):
                print(f"[deps] held back by pyproject.toml: {name} {bound} excludes the newest release, {newest}")
                if lift_upper:
                    subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                                    f"{name}=={newest}"], cwd=ROOT, check=True)
                    print(f"[deps] lifted: {name}=={newest} installed")
        moved = differences(read_lock(), installed_versions(python))
        print(f"[deps] {len(moved)} package(s) differ from constraints.txt:")
        for name, locked, have in moved:
            print(f"  {name:32} {locked:>14} -> {have}")
        check = subprocess.run([python, "-m", "guardforge.tools.deps", "check", "--features-only"], cwd=ROOT)
        tests = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args], cwd=ROOT,
                               capture_output=True, text=True)
        failed = [line for line in tests.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
        summary = tests.stdout.strip().splitlines()[-1:] or ["(pytest printed nothing)"]
        print(f"[deps] tests: {summary[0]}")
        for line in failed:
            print(f"  {line}")
        broke = check.returncode != 0 or tests.returncode not in (0, 5)
        print(f"[deps] {kind}: {'BROKE' if broke else 'ok'}")
        return 1 if broke else 0


def _floor(req: Requirement, python: str = sys.executable) -> str | None:
    """The oldest release the requirement allows (a bound such as >=2.5 may name no release: compel has 2.5.1)."""
    if not any(spec.operator in (">=", "==", "~=", ">") for spec in req.specifier):
        return None
    done = subprocess.run([python, "-m", "pip", "index", "versions", req.name, "--disable-pip-version-check"],
                          capture_output=True, text=True)
    listed = re.search(r"Available versions: (.*)", done.stdout)
    if done.returncode or not listed:
        raise SystemExit(f"cannot list the releases of {req.name}: {done.stderr.strip()[-300:]}")
    releases = sorted(Version(v.strip()) for v in listed.group(1).split(","))
    allowed = [v for v in releases if req.specifier.contains(v, prereleases=False)]
    return str(min(allowed, key=lambda v: v.public)) if allowed else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guardforge.tools.deps", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("lock", help="resolve the newest set within pyproject.toml's bounds and write constraints.txt")
    check = sub.add_parser("check", help="this environment against constraints.txt, and the features' conflicts")
    check.add_argument("--features-only", action="store_true", help="only the feature conflicts")
    for kind in ("latest", "lowest"):
        trial_parser = sub.add_parser(kind, help=f"the {kind} versions our bounds allow, in a fresh venv")
        trial_parser.add_argument("--venv", type=Path, help="keep the venv in this folder (default: a temp folder)")
        trial_parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
        if kind == "latest":
            trial_parser.add_argument("--lift-upper", action="store_true",
                                      help="also install the newest release each upper bound holds back")
    args = parser.parse_args(argv)

    if args.command == "lock":
        pins = resolve()
        write_lock(pins)
        print(f"wrote {LOCK.relative_to(ROOT)}: {len(pins)} packages")
        return 0
    if args.command == "check":
        problems = feature_conflicts()
        if not args.features_only:
            problems += [f"{name} {have} installed, constraints.txt says {locked}"
                         for name, locked, have in differences(read_lock(), installed_versions())
                         if have != "missing"]
        for problem in problems:
            print(problem)
        print("ok: the installed set matches the lock" if not problems and not args.features_only
              else "ok" if not problems else f"{len(problems)} problem(s)")
        return 1 if problems else 0
    return trial(args.command, args.venv, args.pytest_args, lift_upper=getattr(args, "lift_upper", False))


if __name__ == "__main__":
    sys.exit(main())
