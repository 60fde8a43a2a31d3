"""docs/deploy.md only shows commands and flags that the deployment scripts and tests run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "deploy.md"
#: What runs the documented commands: the rehearsal script and the slow deployment test.
RUNNERS = [ROOT / "configs" / "deploy" / "rehearse.sh", ROOT / "tests" / "test_deploy_slow.py"]
PROGRAMS = ("flower-superlink", "flower-supernode", "flwr", "configs/deploy/")


def _commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    out = []
    for line in lines:
        words = shlex.split(line)
        while words and re.match(r"^[A-Z_]+=", words[0]):  # environment assignments
            words = words[1:]
        if words:
            out.append(words)
    return out


def test_readme_links_the_deployment_guide():
    assert "docs/deploy.md" in (ROOT / "README.md").read_text()
    assert DOC.is_file()


def test_every_documented_command_and_flag_is_exercised():
    runners = "\n".join(p.read_text() for p in RUNNERS)
    commands = _commands()
    assert {c[0] for c in commands} >= {"flower-superlink", "flower-supernode", "flwr",
                                        "configs/deploy/make-certs.sh", "configs/deploy/make-node-key.sh"}
    for cmd in commands:
        assert cmd[0].startswith(PROGRAMS), f"docs/deploy.md runs {cmd[0]!r}, which no test runs"
        program = cmd[0].rsplit("/", 1)[-1]
        assert program in runners, f"{program} is documented but never run"
        if cmd[0] == "flwr":  # the subcommand must be one the runners use too
            assert f"flwr {cmd[1]}" in runners, cmd[:2]
        for flag in (w.split("=")[0] for w in cmd if w.startswith("--")):
            assert flag in runners, f"{flag} of {program} is documented but never run"


def test_rehearsal_is_secure_unless_asked():
    script = RUNNERS[0].read_text()
    start = script.split("start_superlink()")[1].split("}")[0]
    assert "--enable-supernode-auth" in start and "--ssl-certfile" in start
    assert script.count("insecure=1") == 1  # only the explicit --insecure switch sets it
    assert "WARNING: --insecure" in script
