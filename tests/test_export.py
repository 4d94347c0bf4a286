"""ONNX export and parity with the torch engine, on real bundled weights (CPU provider)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from typer.testing import CliRunner

from nst_batch.cli import app
from nst_batch.engine.model import ModelConfig
from nst_batch.errors import ConfigError, OnnxError, ParityError
from nst_batch.export import (
    DEFAULT_LAYERS,
    TOLERANCES,
    ExportConfig,
    OnnxFeatures,
    SessionConfig,
    VerifyConfig,
    check_engine_parity,
    export_onnx,
    parse_provider,
    parse_sizes,
    read_info,
    verify,
)
from nst_batch.export.runtime import PROVIDERS
from nst_batch.export.verify import tf32_off
from nst_batch.params import build_config
from nst_batch.pool import ModelPool
from nst_batch.transfer import stylize_tensors
from tests.conftest import content_picture

runner = CliRunner()


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "vgg19_features.onnx"
    export_onnx(path, ExportConfig())
    return path


def copy_export(src: Path, folder: Path, name: str = "copy") -> Path:
    """A copy in its own folder; file names stay, since the model names its data file."""
    (folder / name).mkdir()
    dst = folder / name / src.name
    shutil.copy(src, dst)
    shutil.copy(f"{src}.data", f"{dst}.data")
    return dst


def rewrite(path: Path, edit) -> None:
    """Load an export with its weights, apply ``edit(proto)``, save it back the same way."""
    proto = onnx.load(str(path))
    edit(proto)
    Path(f"{path}.data").unlink()
    onnx.save_model(
        proto,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=f"{path.name}.data",
        size_threshold=0,
    )


def perturb_first_conv(proto: onnx.ModelProto) -> None:
    for i, init in enumerate(proto.graph.initializer):
        if list(init.dims) == [64, 3, 3, 3]:  # conv1_1's kernel
            w = numpy_helper.to_array(init).copy()
            w[5, 1, 1, 1] += 0.05 * np.abs(w).max()  # one weight of one filter
            proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, init.name))
            return
    raise AssertionError("no conv1_1 kernel found")


def test_export_is_checked_external_and_records_its_provenance(exported: Path) -> None:
    data = Path(f"{exported}.data")
    assert data.stat().st_size > 40e6  # the conv weights up to relu5_1, as external data
    assert exported.stat().st_size < 100e3
    onnx.checker.check_model(str(exported), full_check=True)
    proto = onnx.load(str(exported), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["nst_batch.weights_source"] == "bundled"
    assert props["nst_batch.layers"] == ",".join(DEFAULT_LAYERS)
    assert "caffe" in props["nst_batch.preprocessing"]
    info = read_info(exported)
    assert info.layers == DEFAULT_LAYERS and info.pooling == "max" and info.opset == 17
    assert [i.name for i in proto.graph.input] == ["image"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, "H", "W"]


def test_parity_at_odd_size_and_batch_2(exported: Path, weights) -> None:
    report = verify(exported, VerifyConfig(provider="cpu", sizes=parse_sizes("67x131")))
    assert report.inputs == ("noise", "painting")  # one batch of 2
    assert report.ok, report.failures
    assert {c.layer for c in report.checks} == set(DEFAULT_LAYERS)
    assert max(c.max_rel for c in report.checks) < 1e-5
    features = OnnxFeatures(exported)
    out = features(torch.rand(2, 3, 131, 67))
    assert out["relu1_1"].shape == (2, 64, 131, 67)
    assert out["relu5_1"].shape == (2, 512, 131 // 16, 67 // 16)  # pooling floors odd sizes


def test_verify_fails_when_one_weight_is_perturbed(exported: Path, tmp_path: Path) -> None:
    bad = copy_export(exported, tmp_path)
    rewrite(bad, perturb_first_conv)
    report = verify(bad, VerifyConfig(provider="cpu", sizes=((64, 64),)))
    assert not report.ok
    assert "relu1_1" in {c.layer for c in report.failures}
    result = invoke("verify", bad, "--providers", "cpu", "--sizes", "64")
    assert result.exit_code == 1
    assert "FAIL" in result.output and "out of tolerance" in result.output


def test_verify_cli_passes_on_a_good_export_with_a_real_picture(
    exported: Path, tmp_path: Path
) -> None:
    picture = tmp_path / "photo.png"
    content_picture(120, 80).save(picture)
    result = invoke("verify", exported, "--providers", "cpu", "--sizes", "48,67x131")
    assert result.exit_code == 0, result.output
    result = invoke("verify", exported, "--sizes", "40", "--image", picture)
    assert result.exit_code == 0, result.output
    assert "photo.png" in result.output and "within tolerance" in result.output


def test_export_cli(tmp_path: Path) -> None:
    out = tmp_path / "small.onnx"
    result = invoke("export", "-o", out, "--layers", "relu1_1,relu2_1", "--pooling", "avg")
    assert result.exit_code == 0, result.output
    info = read_info(out)
    assert info.layers == ("relu1_1", "relu2_1") and info.pooling == "avg"
    assert invoke("verify", out, "--sizes", "33x47").exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--layers", "relu9_1"), "unknown VGG19 layer"),
        (("--layers", "relu1_1,relu1_1"), "duplicates"),
        (("-o", "model.txt"), "must end in .onnx"),
        (("-o", "missing-folder/m.onnx"), "does not exist"),
        (("--opset", "7"), "opset"),
        (("--weights", "nowhere.pth"), "does not exist"),
    ],
)
def test_export_bad_settings_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("export", *args)
    assert result.exit_code == 1 and message in result.output, result.output


def test_bad_model_files_are_clear_errors(exported: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a protobuf" * 50)
    no_data = copy_export(exported, tmp_path, "nodata")
    Path(f"{no_data}.data").unlink()
    renamed = copy_export(exported, tmp_path, "renamed")

    def rename_input(proto: onnx.ModelProto) -> None:
        proto.graph.input[0].name = "pixels"
        for node in proto.graph.node:
            node.input[:] = ["pixels" if i == "image" else i for i in node.input]

    rewrite(renamed, rename_input)
    other_layers = copy_export(exported, tmp_path, "layers")

    def claim_other_layers(proto: onnx.ModelProto) -> None:
        for p in proto.metadata_props:
            if p.key == "nst_batch.layers":
                p.value = "relu1_1,relu2_2"

    rewrite(other_layers, claim_other_layers)
    foreign = copy_export(exported, tmp_path, "foreign")
    rewrite(foreign, lambda proto: proto.ClearField("metadata_props"))
    cases = {
        tmp_path / "missing.onnx": "no such ONNX model",
        garbage: "not a readable ONNX model",
        no_data: "weights file vgg19_features.onnx.data is missing",
        renamed: "expected one input named 'image'",
        other_layers: "do not match the recorded layers",
        foreign: "not an nst-batch export",
    }
    for path, message in cases.items():
        with pytest.raises(OnnxError, match=message):
            OnnxFeatures(path)
        result = invoke("verify", path, "--sizes", "32")
        assert result.exit_code == 1 and message in result.output.replace("\n", ""), path


def test_export_for_other_weights_is_refused(exported: Path, tmp_path: Path, weights) -> None:
    other = tmp_path / "other.pth"
    torch.save({k: v + 0.01 for k, v in weights.state.items()}, other)
    result = invoke("verify", exported, "--weights", other, "--sizes", "32")
    assert result.exit_code == 1 and "exported from other weights" in result.output


def test_check_onnx_accepts_the_engine_and_refuses_a_corrupt_export(
    exported: Path, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    pool = ModelPool(exported)
    checks = pool.check(ModelConfig(), torch.device("cpu"))
    assert {c.layer for c in checks} == set(DEFAULT_LAYERS)
    assert all(c.ok for c in checks)
    content, style = pair
    out = tmp_path / "out.png"
    args = ("stylize", content, style, "-o", out, "--size", "32", "--steps", "1")
    assert invoke(*args, "--check-onnx", exported).exit_code == 0
    bad = copy_export(exported, tmp_path)
    rewrite(bad, perturb_first_conv)
    out.unlink()
    result = invoke(*args, "--check-onnx", bad)
    assert result.exit_code == 1 and "differ from" in result.output
    assert not out.exists()  # refused to start: nothing made
    model, loaded = ModelPool().get(ModelConfig(), DEFAULT_LAYERS, torch.device("cpu"))
    with pytest.raises(ParityError, match="relu1_1"):
        check_engine_parity(bad, model, loaded.sha256, loaded.source.name, "max")
    with pytest.raises(OnnxError, match="avg pooling"):
        avg = tmp_path / "avg.onnx"
        export_onnx(avg, ExportConfig(layers=("relu1_1",), pooling="avg"))
        check_engine_parity(avg, model, loaded.sha256, loaded.source.name, "max")


def test_onnx_targets_give_the_torch_run(pair: tuple[Path, Path]) -> None:
    from nst_batch.images import load_image

    content, style = load_image(pair[0], 48), load_image(pair[1], 48)
    pool = ModelPool()
    runs = {}
    for backend in ("torch", "onnx"):
        config = build_config(size=48, steps=5, scales=1, targets_backend=backend, precision="fp32")
        model, _ = pool.get(config.model, config.loss.layers, torch.device("cpu"))
        targets = pool.target_features(config.model, config.loss.layers, torch.device("cpu"))
        assert (targets is model) == (backend == "torch")
        runs[backend] = stylize_tensors(content, [style], config, model, target_model=targets)
    torch_losses = [p.loss for p in runs["torch"].history]
    onnx_losses = [p.loss for p in runs["onnx"].history]
    assert onnx_losses == pytest.approx(torch_losses, rel=1e-4)


def test_a_rotten_cached_export_is_made_again() -> None:
    from nst_batch.engine.weights import default_cache_dir

    config = build_config(size=32, steps=1, targets_backend="onnx")
    layers, cpu = config.loss.layers, torch.device("cpu")
    ModelPool().target_features(config.model, layers, cpu)  # exports into the cache (or reuses it)
    (cached,) = (default_cache_dir() / "onnx").glob(f"*-max-{'-'.join(layers)}.onnx")
    rewrite(cached, perturb_first_conv)
    pool = ModelPool()
    model, loaded = pool.get(config.model, layers, cpu)
    with pytest.raises(ParityError):
        check_engine_parity(cached, model, loaded.sha256, loaded.source.name, "max")
    pool.target_features(config.model, layers, cpu)  # notices, exports anew
    check_engine_parity(cached, model, loaded.sha256, loaded.source.name, "max")


# ONNX Runtime's providers, faked: a GPU build (onnxruntime-gpu lists all three) on a machine where
# some of them cannot start. The session really runs on the CPU and reports `gives`, as ORT does
# after dropping providers it could not create.
GPU_BUILD = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def fake_runtime(
    monkeypatch: pytest.MonkeyPatch, gives: tuple[str, ...], available: tuple[str, ...] = GPU_BUILD
) -> tuple[list[list], list[tuple[int, ...]]]:
    """(the providers argument of each session made, the input shape of each run)."""
    import onnxruntime as ort

    real = ort.InferenceSession
    made: list[list] = []
    shapes: list[tuple[int, ...]] = []

    class Session:
        def __init__(self, path: str, options, providers: list) -> None:
            made.append(providers)
            self.real = real(path, options, providers=["CPUExecutionProvider"])

        def get_providers(self) -> list[str]:
            return list(gives)

        def run(self, names: list[str], feed: dict):
            shapes.append(feed["image"].shape)
            return self.real.run(names, feed)

    monkeypatch.setattr(ort, "InferenceSession", Session)
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(available))
    return made, shapes


def names_of(providers: list) -> list[str]:
    return [p if isinstance(p, str) else p[0] for p in providers]


def flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines at the terminal's width


@pytest.mark.parametrize(
    ("asked", "gives"),
    [
        ("cuda", ("CPUExecutionProvider",)),
        ("cuda:1", ("CPUExecutionProvider",)),
        ("tensorrt", ("CUDAExecutionProvider", "CPUExecutionProvider")),
    ],
)
def test_an_explicit_provider_that_ort_downgraded_is_an_error(
    exported: Path, monkeypatch: pytest.MonkeyPatch, asked: str, gives: tuple[str, ...]
) -> None:
    fake_runtime(monkeypatch, gives)
    wanted = PROVIDERS[parse_provider(asked)[0]]
    with pytest.raises(OnnxError, match=f"asked ONNX Runtime for {wanted}.* on {gives[0]}"):
        OnnxFeatures(exported, SessionConfig(asked))
    if asked == "cuda":
        result = invoke("verify", exported, "--providers", asked, "--sizes", "32")
        assert result.exit_code == 1
        assert f"asked ONNX Runtime for {wanted}" in flat(result.output)


def test_auto_falls_back_and_reports_the_provider_that_ran(
    exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made, shapes = fake_runtime(monkeypatch, ("CUDAExecutionProvider", "CPUExecutionProvider"))
    lines: list[str] = []
    report = verify(exported, VerifyConfig(sizes=((40, 32),)), progress=lines.append)
    assert names_of(made[0]) == list(GPU_BUILD)  # auto offered everything the build lists
    assert (report.provider, report.precision) == ("cuda", "fp32")  # not "tensorrt", not fp16
    assert report.tolerance == TOLERANCES["cuda", "fp32"] and report.ok
    (note,) = report.notes
    assert "TensorrtExecutionProvider" in note and "running on CUDAExecutionProvider" in note
    assert note in lines
    assert shapes == [(2, 3, 32, 40)] * 2  # the warm-up runs at the shape that is timed
    result = invoke("verify", exported, "--sizes", "32")
    assert result.exit_code == 0, result.output
    assert "cuda fp32" in flat(result.output) and "could not start it" in flat(result.output)


def test_auto_down_to_the_cpu_names_every_provider_it_skipped(
    exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_runtime(monkeypatch, ("CPUExecutionProvider",))
    features = OnnxFeatures(exported, SessionConfig("auto"))
    assert features.provider == "cpu" and features.requested == "auto"
    (note,) = features.notes
    assert "TensorrtExecutionProvider, CUDAExecutionProvider" in note
    assert note.endswith("running on CPUExecutionProvider")
    fake_runtime(monkeypatch, GPU_BUILD)  # TensorRT started: fp16 by default, no note
    report = verify(exported, VerifyConfig(sizes=((32, 32),)))
    assert (report.provider, report.precision, report.notes) == ("tensorrt", "fp16", ())


def test_device_id_reaches_the_gpu_providers(
    exported: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    made, _ = fake_runtime(monkeypatch, ("CUDAExecutionProvider", "CPUExecutionProvider"))
    features = OnnxFeatures(exported, SessionConfig("cuda:1"))
    assert features.provider == "cuda:1" and features.notes == ()
    assert made[-1] == [
        ("CUDAExecutionProvider", {"device_id": 1, "use_tf32": 0}),
        "CPUExecutionProvider",
    ]
    made, _ = fake_runtime(monkeypatch, GPU_BUILD)
    config = SessionConfig("tensorrt:1", fp16=True, trt_cache=tmp_path / "trt")
    assert OnnxFeatures(exported, config).provider == "tensorrt:1"
    trt, cuda, cpu = made[-1]
    assert trt[0] == "TensorrtExecutionProvider" and trt[1]["device_id"] == 1
    assert trt[1]["trt_fp16_enable"] is True and (tmp_path / "trt").is_dir()
    assert cuda == ("CUDAExecutionProvider", {"device_id": 1, "use_tf32": 0})
    assert cpu == "CPUExecutionProvider"
    made, _ = fake_runtime(monkeypatch, ("CUDAExecutionProvider", "CPUExecutionProvider"))
    OnnxFeatures(exported, SessionConfig("cuda"))
    assert made[-1][0] == ("CUDAExecutionProvider", {"device_id": 0, "use_tf32": 0})


@pytest.mark.parametrize("name", ["directml", "cpu:1", "auto:0", "cuda:x", "cuda:"])
def test_bad_provider_names(name: str) -> None:
    with pytest.raises(ConfigError, match="unknown provider"):
        SessionConfig(name)


def test_a_provider_the_build_lacks_is_refused_with_a_hint(
    exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_runtime(monkeypatch, ("CPUExecutionProvider",), available=("CPUExecutionProvider",))
    with pytest.raises(ConfigError, match=r"no CUDAExecutionProvider .*the `gpu` extra\)$"):
        OnnxFeatures(exported, SessionConfig("cuda"))
    monkeypatch.setattr(
        "nst_batch.export.runtime.runtime_packages", lambda: {"onnxruntime", "onnxruntime-gpu"}
    )
    with pytest.raises(ConfigError, match="both installed"):
        OnnxFeatures(exported, SessionConfig("cuda"))


def test_tf32_off_turns_tf32_off_and_restores_the_flags() -> None:
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32, torch.get_float32_matmul_precision())
    try:
        for state in [(True, True), (True, False), (False, True), (False, False)]:
            matmul.allow_tf32, cudnn.allow_tf32 = state
            with tf32_off():
                assert (matmul.allow_tf32, cudnn.allow_tf32) == (False, False)
            assert (matmul.allow_tf32, cudnn.allow_tf32) == state
        with pytest.raises(KeyError), tf32_off():
            raise KeyError("restored after an error too")
        assert (matmul.allow_tf32, cudnn.allow_tf32) == state
        torch.set_float32_matmul_precision("medium")  # more than allow_tf32 can say
        with tf32_off():
            assert not matmul.allow_tf32
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(saved[2])
        matmul.allow_tf32, cudnn.allow_tf32 = saved[:2]


def test_the_engine_probe_runs_without_tf32(exported: Path) -> None:
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    model, loaded = ModelPool().get(ModelConfig(), DEFAULT_LAYERS, torch.device("cpu"))
    seen: list[tuple[bool, bool]] = []

    class Spy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
            seen.append((matmul.allow_tf32, cudnn.allow_tf32))
            return self.model(image)

    saved = (matmul.allow_tf32, cudnn.allow_tf32)
    try:
        matmul.allow_tf32 = cudnn.allow_tf32 = True
        check_engine_parity(exported, Spy(), loaded.sha256, loaded.source.name, "max")
        assert seen == [(False, False)]
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (True, True)
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved
