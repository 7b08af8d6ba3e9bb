"""The distribution: a wheel built from the repository installs the ``fanout`` command and the API, and runs a job.

Slow (~20 s): the wheel is built from a copy of the checkout, then installed into a throwaway virtualenv
that borrows the already-installed dependencies (no download), and used from a folder outside the repository.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import fanout

ROOT = Path(__file__).resolve().parents[2]
# what never belongs in the distribution: the CDK app and constructs, the tests, the benchmarks
NOT_SHIPPED = ("infra/", "tests/", "bench/", "app.py", "examples/")
PROJECT_COPIES = ("statemachine/fanout.asl.json", "cdk.json", "infra/job_rule.py")


def _copy_checkout(target: Path) -> None:
    """The files of the repository (tracked or new, not ignored), as a fresh clone would have them."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source, dist = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    _copy_checkout(source)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check", "-w", str(dist), "."],
        cwd=source,
        check=True,
        capture_output=True,
    )
    (built,) = dist.glob("fanout-*.whl")
    return built


def _pins(path: Path) -> set[str]:
    pins: set[str] = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            pins |= _pins(path.parent / line[3:].strip())
        elif line:
            pins.add(line.lower())
    return pins


def test_every_file_the_manifest_includes_exists() -> None:
    # a stale line (a data file renamed or deleted) only warns when the sdist is built: fail here instead
    for line in (ROOT / "MANIFEST.in").read_text().splitlines():
        words = line.split("#")[0].split()
        if words and words[0] == "include":
            for pattern in words[1:]:
                assert list(ROOT.glob(pattern)), f"MANIFEST.in includes {pattern}, which does not exist"
    assert "models.json" in (ROOT / "MANIFEST.in").read_text()


def test_the_package_depends_on_the_pinned_runtime_and_local_requirements() -> None:
    # the wheel's dependencies are the pins the checkout installs, less the CDK (only deploying needs it)
    declared = {d.lower() for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    pinned = {p for p in _pins(ROOT / "requirements.txt") if not p.startswith(("aws-cdk-lib", "constructs"))}
    assert declared == pinned


@pytest.mark.slow
def test_the_wheel_holds_both_packages_their_data_and_the_project_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())

    # every module of fanout/ and lambdas/fanout_core/, and fanout_core's data files (models.json)
    for package, folder in (("fanout", ROOT / "fanout"), ("fanout_core", ROOT / "lambdas" / "fanout_core")):
        expected = {
            f"{package}/{p.relative_to(folder).as_posix()}"
            for p in folder.rglob("*")
            if p.is_file() and p.suffix in (".py", ".json", ".html") and "__pycache__" not in p.parts
        }
        assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    assert [n for n in names if n.startswith("fanout_core/") and n.endswith(".json")], "fanout_core's data is missing"

    # the files the local runtime reads, as copies equal to the repository's
    with zipfile.ZipFile(wheel) as archive:
        for relative in PROJECT_COPIES:
            assert archive.read(f"fanout/_project/{relative}") == (ROOT / relative).read_bytes(), relative
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert re.search(r"^fanout = fanout\.cli:entry_point$", entry_points, re.M)

    # and nothing else of the repository
    assert not [n for n in names if n.startswith(NOT_SHIPPED) or n.endswith(".pyc")]


@pytest.mark.slow
def test_the_installed_command_and_api_run_a_job_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    # Given a new virtualenv holding the wheel, its dependencies borrowed from this one (nothing downloaded)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True
    ).stdout.strip()
    borrowed = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "_borrowed_dependencies.pth").write_text(borrowed + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
    )
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "examples" / "ticket-triage.json", work / "ticket-triage.json")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AWS_"))}

    # When the command asks for its version, then runs a job, from a folder that is not the checkout
    version = subprocess.run([venv / "bin" / "fanout", "--version"], cwd=work, env=env, capture_output=True, text=True)
    ran = subprocess.run(
        [venv / "bin" / "fanout", "run", "ticket-triage.json", "--out", "out", "--model", "sim:latency_ms=1"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    # Then both work from the installed package, the ASL file and cdk.json included
    assert version.returncode == 0 and version.stdout.strip() == f"fanout {fanout.__version__}", version
    assert ran.returncode == 0, ran.stderr
    assert json.loads((work / "out" / "ticket-triage" / "result.json").read_text())["status"] == "complete"

    # and the API imports from the installed package, not from the repository
    script = (
        "import fanout, fanout_core; print(fanout.__file__); print(fanout_core.__file__); "
        "print(fanout.validate('ticket-triage.json').tasks)"
    )
    api = subprocess.run([python, "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert api.returncode == 0, api.stderr
    fanout_file, core_file, tasks = api.stdout.split()
    assert fanout_file.startswith(site) and core_file.startswith(site)
    assert tasks == "60"
