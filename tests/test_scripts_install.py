"""The two fresh-machine commands: scripts/install.sh installs what is missing and nothing on a
second run; .ci/run runs exactly the README's test command.

install.sh runs here against a stand-in venv (VENV=...): its ``bin/python`` logs every call and
answers ``-m pip ...`` without installing anything, and runs everything else with this
interpreter (which has every package), so no network and no real venv are touched.
"""
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fake_venv(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls.log"
    python = venv / "bin" / "python"
    python.write_text(f"""#!/bin/sh
echo "$*" >> {log}
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then exit 0; fi
exec {sys.executable} "$@"
""")
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return venv, log


def install(venv, **env):
    return subprocess.run(["bash", str(ROOT / "scripts" / "install.sh")], capture_output=True, text=True,
                          env={**os.environ, "VENV": str(venv), **env}, timeout=300)


def pip_calls(log):
    return [line for line in log.read_text().splitlines() if line.startswith("-m pip")] if log.exists() else []


def test_install_then_nothing_to_install_until_something_changes(tmp_path):
    venv, log = fake_venv(tmp_path)
    first = install(venv)
    assert first.returncode == 0, first.stderr
    assert pip_calls(log) == ["-m pip install -q --upgrade pip setuptools wheel",
                              "-m pip install -q torch==2.14.1 torchvision==0.29.1 transformers==5.25.0",
                              "-m pip install -q --no-build-isolation -e .[test]"]
    assert "installed: torch" in first.stdout
    assert (venv / ".seg-zero-install").read_text().startswith(
        f"{ROOT} torch==2.14.1 torchvision==0.29.1 transformers==5.25.0 ")

    log.unlink()
    again = install(venv)  # up to date: no pip at all
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"install: {venv} is up to date, nothing to install\n"
    assert pip_calls(log) == []

    log.unlink()
    other = install(venv, TORCH_VERSION="2.99.0")  # another torch pin: installs again
    assert other.returncode == 0, other.stderr
    assert "-m pip install -q torch==2.99.0 torchvision==0.29.1 transformers==5.25.0" in pip_calls(log)

    log.unlink()
    other = install(venv, TORCH_VERSION="2.99.0", TRANSFORMERS_VERSION="5.99.0")  # another transformers pin
    assert other.returncode == 0, other.stderr
    assert "-m pip install -q torch==2.99.0 torchvision==0.29.1 transformers==5.99.0" in pip_calls(log)


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Fresh machine"):]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["bash scripts/install.sh && .venv/bin/torchrun --standalone --nproc_per_node=2 train.py",
                        "bash scripts/install.sh && .venv/bin/python -m pytest -q"]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert ci[-1] == commands[1]
    assert ci[:-1] == ["set -euo pipefail", 'cd "$(dirname "$0")/.."']
