"""No Docker engine here: the Dockerfile's and compose file's essentials, checked as text."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def env_of(steps: list[tuple[str, str]]) -> dict[str, str]:
    """Every ENV instruction's KEY=VALUE pairs, later ones winning."""
    env: dict[str, str] = {}
    for op, arguments in steps:
        if op == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(arguments))
    return env


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_dockerfile_builds_a_gpu_watch_daemon_image() -> None:
    steps = instructions()
    ops = [op for op, _ in steps]
    args = {op: a for op, a in steps}  # the last of each kind, as Docker uses it
    runs = [a for op, a in steps if op == "RUN"]
    assert any('pip install ".[gpu,video]"' in r for r in runs)  # video: PyAV, OpenCV
    # A non-root default user, and the weights decoded at build time, before it takes over.
    assert args["USER"].split(":")[0] not in ("root", "0")
    weights_at = next(i for i, (op, a) in enumerate(steps) if "nst-batch weights" in a)
    assert weights_at < ops.index("USER")
    assert args["VOLUME"] == "/data"
    assert json.loads(args["ENTRYPOINT"]) == ["nst-batch"]
    assert json.loads(args["CMD"]) == ["watch", "/data/inbox"]
    health = args["HEALTHCHECK"]
    assert "CMD nst-batch status /data/inbox --max-age" in health


def test_the_image_has_one_cuda_stack() -> None:
    """No CUDA base image under the PyPI torch wheel (which brings its own CUDA); ONNX Runtime from
    a release built for torch's CUDA major version, its libraries as the same pip packages."""
    steps = instructions()
    base = steps[0][1]
    assert steps[0][0] == "FROM" and re.match(r"python:3\.\d+-slim", base), base
    assert "cuda" not in base.lower()
    runs = [a for op, a in steps if op == "RUN"]
    (both,) = [r for r in runs if re.search(r"pip install \"?torch==", r)]
    torch_pin = re.search(r"torch==([\d.]+)", both)
    ort = re.search(r"onnxruntime-gpu\[([a-z,]+)\]>=([\d.]+)", both)  # in the same resolve
    assert torch_pin and ort, both
    assert set(ort.group(1).split(",")) == {"cuda", "cudnn"}
    # The PyPI torch 2.13 wheel uses CUDA 13; onnxruntime-gpu 1.28 is the first whose cuda and
    # cudnn extras name the CUDA 13 packages torch uses (1.27's point at a placeholder).
    if version(torch_pin.group(1)) >= (2, 13):
        assert version(ort.group(2)) >= (1, 28)
    # The build fails on a second stack: CPU onnxruntime, or CUDA 11/12 pip packages.
    guard = next(r for r in runs if "pip list" in r)
    assert "! pip list" in guard and "onnxruntime|" in guard and "cu1[12]" in guard


def test_the_image_runs_as_any_uid() -> None:
    """`docker run --user "$(id -u):$(id -g)"` with a /data owned by that user: nothing in the
    image may need a particular uid, and /data is never chown'ed."""
    steps = instructions()
    assert not any("chown" in arguments for _, arguments in steps)
    assert '--user "$(id -u):$(id -g)"' in (ROOT / "Dockerfile").read_text()  # how to run it
    env = env_of(steps)
    home, cache = env["HOME"], env["NST_BATCH_CACHE"]
    assert env["XDG_CACHE_HOME"].startswith(home) and env.get("USER")  # getpass.getuser()
    assert not cache.startswith(home) and not cache.startswith("/data")
    (setup,) = [a for op, a in steps if op == "RUN" and "nst-batch weights" in a]
    assert f"chmod -R a+rX {cache}" in setup  # the decoded weights: readable by every uid
    sticky = re.search(r"chmod 1777 ([^&]+)", setup)
    assert sticky is not None
    writable = sticky.group(1).split()
    assert {home, env["XDG_CACHE_HOME"], cache, f"{cache}/onnx", "/data"} <= set(writable)


def test_extras_keep_the_cpu_and_gpu_onnx_runtimes_apart() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]

    def closure(name: str) -> set[str]:
        found: set[str] = set()
        for req in extras[name]:
            inner = re.fullmatch(r"nst-batch\[([\w,-]+)\]", req)
            found |= set().union(*map(closure, inner.group(1).split(","))) if inner else {req}
        return found

    def runtimes(name: str) -> set[str]:
        return {re.split(r"[<>=\[]", r)[0] for r in closure(name) if r.startswith("onnxruntime")}

    assert runtimes("dev") == set()  # so `.[dev,gpu]` never brings the CPU build
    assert runtimes("dev-cpu") == runtimes("cpu") == {"onnxruntime"}
    assert runtimes("dev-gpu") == runtimes("gpu") == {"onnxruntime-gpu"}
    (gpu,) = extras["gpu"]
    floor = re.fullmatch(r"onnxruntime-gpu>=([\d.]+)", gpu)
    assert floor and version(floor.group(1)) >= (1, 19)  # 1.18 and older: CUDA 11.8 on PyPI
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^EXTRAS \?= dev-cpu$", makefile, re.M)  # make test: the CPU build
    assert '-e ".[$(EXTRAS)]"' in makefile


def test_compose_reserves_a_gpu_and_mounts_data() -> None:
    text = (ROOT / "deploy" / "compose.yaml").read_text()
    try:
        import yaml
    except ImportError:
        for needle in ("driver: nvidia", "./data:/data", "restart: unless-stopped", "gpu"):
            assert needle in text
        assert 'user: "${NST_UID:-1000}:${NST_GID:-1000}"' in text
        return
    service = yaml.safe_load(text)["services"]["nst-batch"]  # pragma: no cover - needs PyYAML
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "./data:/data" in service["volumes"] and service["restart"] == "unless-stopped"
    assert service["user"] == "${NST_UID:-1000}:${NST_GID:-1000}"  # data/'s owner, not a fixed uid


def test_slurm_runs_the_image_as_the_submitting_user() -> None:
    text = (ROOT / "deploy" / "slurm-array.sh").read_text()
    (run,) = [line for line in text.splitlines() if "docker run" in line]
    assert '--user "$(id -u):$(id -g)"' in run


@pytest.mark.parametrize("option", ["--max-age", "--local"])
def test_the_healthcheck_uses_real_status_options(option: str) -> None:
    from typer.testing import CliRunner

    from nst_batch.cli import app

    help_text = CliRunner().invoke(app, ["status", "--help"]).output
    assert option in help_text
