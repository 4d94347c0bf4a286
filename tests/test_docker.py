"""No Docker engine here: the Dockerfile's and compose file's essentials, checked as text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_dockerfile_builds_a_gpu_watch_daemon_image() -> None:
    steps = instructions()
    ops = [op for op, _ in steps]
    args = {op: a for op, a in steps}  # the last of each kind, as Docker uses it
    assert steps[0][0] == "FROM" and re.match(r"nvidia/cuda:[\d.]+-.*runtime", steps[0][1])
    runs = [a for op, a in steps if op == "RUN"]
    assert any(re.search(r"pip install \"?torch==", r) for r in runs)  # the registry's CUDA build
    assert any('pip install ".[gpu]"' in r for r in runs)
    # A non-root user, and the weights decoded as that user at build time.
    assert args["USER"] not in ("root", "0") and any("useradd" in r for r in runs)
    user_at = ops.index("USER")
    assert any(op == "RUN" and "nst-batch weights" in a for op, a in steps[user_at:])
    assert args["VOLUME"] == "/data"
    assert json.loads(args["ENTRYPOINT"]) == ["nst-batch"]
    assert json.loads(args["CMD"]) == ["watch", "/data/inbox"]
    health = args["HEALTHCHECK"]
    assert "CMD nst-batch status /data/inbox --max-age" in health


def test_compose_reserves_a_gpu_and_mounts_data() -> None:
    text = (ROOT / "deploy" / "compose.yaml").read_text()
    try:
        import yaml
    except ImportError:
        for needle in ("driver: nvidia", "./data:/data", "restart: unless-stopped", "gpu"):
            assert needle in text
        return
    service = yaml.safe_load(text)["services"]["nst-batch"]  # pragma: no cover - needs PyYAML
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "./data:/data" in service["volumes"] and service["restart"] == "unless-stopped"


@pytest.mark.parametrize("option", ["--max-age", "--local"])
def test_the_healthcheck_uses_real_status_options(option: str) -> None:
    from typer.testing import CliRunner

    from nst_batch.cli import app

    help_text = CliRunner().invoke(app, ["status", "--help"]).output
    assert option in help_text
