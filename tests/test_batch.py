"""Batched jobs, the batched L-BFGS, CUDA graphs' eager fallback and precision (CPU; GPU marked)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import nst_batch.engine.graphs as graphs_module
from nst_batch.config import StylizeConfig
from nst_batch.demo import swirl_painting
from nst_batch.engine.graphs import Replay, features_at, native_bf16, resolve_precision
from nst_batch.engine.lbfgs import BatchedLBFGS
from nst_batch.engine.model import ModelConfig
from nst_batch.engine.optimize import OptimConfig
from nst_batch.errors import ConfigError
from nst_batch.images import to_tensor
from nst_batch.jobs.inputs import Job
from nst_batch.jobs.run import run_batch, run_job
from nst_batch.params import build_config
from nst_batch.pool import ModelPool
from nst_batch.transfer import stylize_batch_tensors, stylize_tensors
from tests.conftest import content_picture, make_model

SIZE = 48


def _quartic(b: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(b, n, n, generator=gen, dtype=torch.float64)
    a = a @ a.transpose(1, 2) / n + 0.1 * torch.eye(n, dtype=torch.float64)
    return a, torch.randn(b, n, generator=gen, dtype=torch.float64)


def _torch_lbfgs(
    x0: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor], steps: int, lr: float, history: int
) -> torch.Tensor:
    """The reference: torch.optim.LBFGS as the engine used to drive it, one iteration a step."""
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [x], lr=lr, max_iter=1, history_size=history, tolerance_grad=0, tolerance_change=0
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = f(x)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return x.detach()


@pytest.mark.parametrize("history", [100, 4])  # 4: the ring of pairs wraps around
def test_batched_lbfgs_is_torch_lbfgs_per_image(history: int) -> None:
    """Each image of a batch follows torch.optim.LBFGS (max_iter=1, no line search) alone."""
    a, c = _quartic(3, 40)

    def f(x: torch.Tensor, i: int) -> torch.Tensor:  # a convex quartic per image
        return 0.5 * x @ a[i] @ x - c[i] @ x + 0.01 * (x**4).sum()

    x0 = torch.randn(3, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = [_torch_lbfgs(x0[i], lambda x, i=i: f(x, i), 25, 1.0, history) for i in range(3)]
    x = x0.clone().requires_grad_(True)
    lbfgs = BatchedLBFGS(x.detach(), 1.0, history)
    for _ in range(25):
        (grad,) = torch.autograd.grad(sum(f(x[i], i) for i in range(3)), x)
        lbfgs.step(grad)
    torch.testing.assert_close(x.detach(), torch.stack(expected), rtol=1e-9, atol=1e-9)


def test_batched_lbfgs_skips_pairs_without_curvature_per_image() -> None:
    """A pair with y's <= 0 (concave loss) is skipped for that image only, as torch does."""
    shift = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)

    def f(x: torch.Tensor, i: int) -> torch.Tensor:  # image 0 concave, image 1 convex
        return (-0.5 if i == 0 else 1.0) * (x**2).sum() + shift @ x

    x0 = torch.tensor([[0.5, 1.0, -1.0], [0.5, 1.0, -1.0]], dtype=torch.float64)
    expected = [_torch_lbfgs(x0[i], lambda x, i=i: f(x, i), 4, 0.5, 10) for i in range(2)]
    x = x0.clone().requires_grad_(True)
    lbfgs = BatchedLBFGS(x.detach(), 0.5, 10)
    for _ in range(4):
        (grad,) = torch.autograd.grad(f(x[0], 0) + f(x[1], 1), x)
        lbfgs.step(grad)
    assert (lbfgs.rho[0] == 0).all()  # image 0 kept no pair
    assert (lbfgs.rho[1] > 0).sum() == 3  # image 1 kept every pair
    torch.testing.assert_close(x.detach(), torch.stack(expected), rtol=1e-9, atol=1e-9)


def test_replay_runs_eagerly_off_cuda() -> None:
    calls: list[int] = []
    run = Replay(lambda: calls.append(1) or len(calls), torch.device("cpu"))
    assert [run() for _ in range(6)] == [1, 2, 3, 4, 5, 6]
    assert not run.captured and not run.enabled


@pytest.fixture(scope="module")
def model(weights) -> torch.nn.Module:
    return make_model(weights, StylizeConfig().loss.layers)


@pytest.fixture()
def model64(weights) -> torch.nn.Module:
    return make_model(weights, StylizeConfig().loss.layers).double()


@pytest.fixture(scope="module")
def inputs() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    contents = [to_tensor(content_picture(SIZE, SIZE // 4 * 3).rotate(90 * k)) for k in range(3)]
    contents = [c[..., : SIZE // 4 * 3, :SIZE] for c in contents]
    styles = [to_tensor(swirl_painting(40 + 8 * k, seed=k, strokes=200)) for k in range(3)]
    return contents, styles


def _configs(optimizer: str) -> list[StylizeConfig]:
    """Three jobs that differ in everything a batch lets them differ in."""
    optim = OptimConfig(optimizer=optimizer, steps=6)  # type: ignore[arg-type]
    base = build_config(size=SIZE, scales=1)
    base = dataclasses.replace(base, optim=optim)
    return [
        base,
        dataclasses.replace(
            base,
            init="noise",
            seed=3,
            loss=dataclasses.replace(base.loss, style_weight=100.0, tv_weight=0.0),
        ),
        dataclasses.replace(
            base,
            style_scale=0.5,
            preserve_colors=True,
            loss=dataclasses.replace(
                base.loss, content_weight=3.0, style_layers=(("relu1_1", 0.7), ("relu3_1", 0.3))
            ),
        ),
    ]


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_a_job_in_a_batch_of_three_matches_its_solo_run(model64, inputs, optimizer: str) -> None:
    """In float64 a batched job's path is its solo path to rounding: nothing leaks between jobs.
    (In float32 the convolutions round differently for batch 3 and batch 1, and L-BFGS amplifies
    differences of 1e-7 to ~1e-3 in a few steps: rounding, not leakage.)"""
    model = model64
    contents, styles = ([t.double() for t in group] for group in inputs)
    configs = _configs(optimizer)
    # The third job's style layers differ: batch it with jobs of the same layer set.
    configs[2] = dataclasses.replace(
        configs[2],
        loss=dataclasses.replace(configs[2].loss, style_layers=configs[0].loss.style_layers),
    )
    batch = stylize_batch_tensors(contents, [[s] for s in styles], configs, model)
    assert batch.image.shape[0] == 3
    for i, config in enumerate(configs):
        solo = stylize_tensors(contents[i], styles[i], config, model)
        torch.testing.assert_close(batch.image[i : i + 1], solo.image, rtol=0, atol=1e-9)
        assert batch.losses[i] == pytest.approx(solo.loss, rel=1e-9)
        assert [p.jobs[i][0] for p in batch.history] == pytest.approx(
            [p.loss for p in solo.history], rel=1e-9
        )
    assert not torch.equal(batch.image[0], batch.image[1])


def test_batch_refuses_jobs_that_cannot_share_a_batch(model, inputs) -> None:
    contents, styles = inputs
    configs = _configs("lbfgs")  # the third has other style layers
    with pytest.raises(ConfigError, match="batched together"):
        stylize_batch_tensors(contents, [[s] for s in styles], configs, model)


def test_graphs_flag_off_cuda_gives_identical_numbers(model, inputs) -> None:
    contents, styles = inputs
    config = _configs("lbfgs")[0]
    off = dataclasses.replace(config, model=ModelConfig(cuda_graphs=False))
    a = stylize_tensors(contents[0], styles[0], config, model)
    b = stylize_tensors(contents[0], styles[0], off, model)
    assert torch.equal(a.image, b.image)


def test_bf16_final_loss_is_close_to_fp32(model, inputs) -> None:
    contents, styles = inputs
    # The reference is pinned to fp32 ("auto" is bf16 on a CPU or GPU that has it natively).
    # 20 steps: after 10 the two paths (style weight 45) are still 15% apart at this tiny size
    base = dataclasses.replace(_configs("lbfgs")[0], optim=OptimConfig(steps=20))
    config = dataclasses.replace(base, model=ModelConfig(precision="fp32"))
    bf16 = dataclasses.replace(base, model=ModelConfig(precision="bf16"))
    full = stylize_tensors(contents[0], styles[0], config, model)
    low = stylize_tensors(contents[0], styles[0], bf16, model)
    features = features_at(model, "bf16")(contents[0])
    assert features["relu1_1"].dtype == torch.bfloat16  # the convolutions did run in bf16
    assert low.loss == pytest.approx(full.loss, rel=0.1)
    assert low.loss < 0.8 * low.history[0].loss  # and it optimizes


def test_precision_is_validated_and_auto_resolves_per_device() -> None:
    with pytest.raises(ConfigError, match="precision"):
        build_config(precision="fp8")
    assert build_config().model.precision == "auto"
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if native_bf16(cpu) else "fp32")
    assert resolve_precision("tf32", cpu) == "tf32"
    assert not native_bf16(torch.device("meta"))


def test_auto_takes_bf16_on_a_cpu_only_where_it_measures_faster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu = torch.device("cpu")
    assert graphs_module.cpu_bf16_speedup() > 0  # the real probe runs
    monkeypatch.setattr(graphs_module, "cpu_bf16_flags", lambda: True)
    for speedup, expected in ((1.6, "bf16"), (1.1, "fp32"), (0.6, "fp32")):
        monkeypatch.setattr(graphs_module, "cpu_bf16_speedup", lambda s=speedup: s)
        assert resolve_precision("auto", cpu) == expected
    monkeypatch.setattr(graphs_module, "cpu_bf16_flags", lambda: False)  # no bf16 instructions
    assert resolve_precision("auto", cpu) == "fp32"


def test_run_batch_writes_each_job_like_a_solo_run(tmp_path: Path) -> None:
    content, style = tmp_path / "c.png", tmp_path / "s.png"
    content_picture(SIZE, SIZE).save(content)
    swirl_painting(SIZE, seed=2, strokes=200).save(style)
    # fp32: in bf16 batch and solo round differently (the convolutions see other batch sizes)
    config = build_config(size=SIZE, steps=3, scales=1, precision="fp32")
    heavy = build_config(size=SIZE, steps=3, scales=1, style_weight=200.0, precision="fp32")
    jobs = [
        Job(content, (style,), tmp_path / "a.png", config, name="a"),
        Job(content, (style,), tmp_path / "b.png", heavy, name="b"),
    ]
    models = ModelPool()
    results = run_batch(jobs, models)
    run_job(dataclasses.replace(jobs[1], output=tmp_path / "solo.png"), models)
    assert len(results) == 2
    meta = [json.loads((tmp_path / f"{n}.json").read_text()) for n in ("a", "b", "solo")]
    assert meta[0]["parameter_hash"] != meta[1]["parameter_hash"]
    assert meta[1]["parameter_hash"] == meta[2]["parameter_hash"]
    assert meta[1]["final_loss"]["total"] == pytest.approx(meta[2]["final_loss"]["total"], 1e-4)
    assert meta[1]["steps_completed"] == 3 and len(meta[1]["loss_history"]) == 3


@pytest.mark.gpu
def test_gpu_graph_replay_matches_eager(weights, inputs) -> None:
    contents, styles = inputs
    model = make_model(weights, StylizeConfig().loss.layers).cuda()
    for optimizer in ("lbfgs", "adam"):
        # fp32, and few steps: cuDNN's backward kernels may sum in any order, and L-BFGS
        # amplifies such rounding; the graph must not change anything beyond it.
        config = dataclasses.replace(
            _configs(optimizer)[0],
            model=ModelConfig(precision="fp32"),
            optim=OptimConfig(optimizer, steps=8, sync_every=3),
        )
        eager = dataclasses.replace(config, model=ModelConfig(precision="fp32", cuda_graphs=False))
        a = stylize_tensors(contents[0], styles[0], config, model)
        b = stylize_tensors(contents[0], styles[0], eager, model)
        assert [p.step for p in a.history] == list(range(1, 9))  # every step reported
        losses = [p.loss for p in a.history[:4]]  # steps 4+ replay the captured graph
        assert losses == pytest.approx([p.loss for p in b.history[:4]], rel=1e-4)
        torch.testing.assert_close(a.image, b.image, rtol=0, atol=1e-2)


@pytest.mark.gpu
def test_gpu_bf16_final_loss_within_10_percent_of_fp32(weights, inputs) -> None:
    contents, styles = inputs
    model = make_model(weights, StylizeConfig().loss.layers).cuda()
    base = dataclasses.replace(_configs("lbfgs")[0], optim=OptimConfig(steps=50))
    config = dataclasses.replace(base, model=ModelConfig(precision="fp32"))
    bf16 = dataclasses.replace(base, model=ModelConfig(precision="bf16"))
    full = stylize_tensors(contents[0], styles[0], config, model)
    low = stylize_tensors(contents[0], styles[0], bf16, model)
    assert low.loss == pytest.approx(full.loss, rel=0.1)


@pytest.mark.gpu
def test_gpu_batched_equals_solo(weights, inputs) -> None:
    contents, styles = inputs
    model = make_model(weights, StylizeConfig().loss.layers).cuda()
    fp32 = ModelConfig(precision="fp32")
    configs = [dataclasses.replace(c, model=fp32) for c in _configs("adam")[:2]]
    batch = stylize_batch_tensors(contents[:2], [[s] for s in styles[:2]], configs, model)
    for i, config in enumerate(configs):
        solo = stylize_tensors(contents[i], styles[i], config, model)
        torch.testing.assert_close(batch.image[i : i + 1], solo.image, rtol=0, atol=1e-3)


@pytest.mark.gpu
def test_gpu_full_history_lbfgs_step_replays_as_a_graph(weights, inputs) -> None:
    contents, styles = inputs
    model = make_model(weights, StylizeConfig().loss.layers).cuda()
    # history 3: full after 3 steps, then 3 eager warm-ups, the capture, 6 replays
    optim = OptimConfig("lbfgs", steps=16, sync_every=4, history_size=3)
    config = dataclasses.replace(
        _configs("lbfgs")[0], model=ModelConfig(precision="fp32"), optim=optim
    )
    eager = dataclasses.replace(config, model=ModelConfig(precision="fp32", cuda_graphs=False))
    a = stylize_tensors(contents[0], styles[0], config, model)
    b = stylize_tensors(contents[0], styles[0], eager, model)
    assert a.graphs == "on" and [p.step for p in a.history] == list(range(1, 17))
    # cuDNN's sums in any order, amplified by L-BFGS: close, not equal
    assert a.loss == pytest.approx(b.loss, rel=0.05)
    assert a.loss < a.history[0].loss
