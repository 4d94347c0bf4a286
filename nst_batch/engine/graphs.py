"""CUDA graphs for the hot loop, and the numeric precision the feature stack runs at.

At 512 px one VGG19 forward + backward is ~250 kernels; launched one by one from Python the GPU
idles between them (launch-bound well below the hardware's speed). Captured once into a CUDA
graph and replayed, the whole evaluation is one launch. :class:`Replay` wraps a zero-argument
step that reads and writes fixed tensors (the image being optimized, the optimizer's state):
its first ``warmup`` calls run eagerly on a side stream (cuDNN autotuning and autograd's lazy
setup happen there, as the CUDA-graphs docs require), the next call captures and every later call
replays. Warm-up calls are real steps, so the trajectory is the same as without graphs. On CPU
or MPS, or with ``enabled=False``, every call runs eagerly: the same code, the same numbers.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Generic, Literal, TypeVar

import torch
from torch import Tensor

from nst_batch.errors import ConfigError

Precision = Literal["auto", "fp32", "tf32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "tf32", "bf16")
WARMUP_CALLS = 3  # eager calls before capture (the CUDA-graphs docs use a few)
# auto takes bf16 on a CPU only when its convolutions are at least this much faster: a smaller
# gain is not worth bf16's rounding, and a probe's noise must not flip the choice
BF16_MIN_SPEEDUP = 1.25

T = TypeVar("T")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")


def native_bf16(device: torch.device) -> bool:
    """Does the device compute bf16 natively and faster than float32: a CUDA GPU of compute
    capability 8.0 or newer, or a CPU with AVX512-BF16 or AMX instructions (Linux: read from
    /proc/cpuinfo; elsewhere assumed not) whose bf16 convolutions measure at least
    :data:`BF16_MIN_SPEEDUP` times faster (:func:`cpu_bf16_speedup`)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    return cpu_bf16_flags() and cpu_bf16_speedup() >= BF16_MIN_SPEEDUP


def cpu_bf16_flags() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@functools.cache  # a property of the machine: measured once per process (~0.1 s)
def cpu_bf16_speedup() -> float:
    """float32 over bf16 time of a 3x3, 128-channel convolution of a 64x64 channels_last map
    (the VGG stack's kind of work), each dtype's best of 3 calls, interleaved.

    The instruction flags alone do not say it: on the AMD EPYC (AVX512-BF16) this project was
    first measured on, bf16 steps were 1.6x faster than float32; on an Intel Xeon with
    AVX512-BF16 but no AMX they take 1.5-1.7x longer (``benchmarks/results/step-cpu.md``)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 128, 64, 64, generator=gen).to(memory_format=torch.channels_last)
    w = torch.randn(128, 128, 3, 3, generator=gen).to(memory_format=torch.channels_last)
    pairs = {dtype: (x.to(dtype), w.to(dtype)) for dtype in (torch.float32, torch.bfloat16)}
    best = dict.fromkeys(pairs, float("inf"))
    with torch.no_grad():
        for repeat in range(4):  # the first is a warm-up (oneDNN picks and builds its kernel)
            for dtype, (xi, wi) in pairs.items():
                start = time.perf_counter()
                torch.nn.functional.conv2d(xi, wi, padding=1)
                if repeat:
                    best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best[torch.float32] / best[torch.bfloat16]


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """``auto`` is bf16 where the device computes it natively and faster, else fp32."""
    check_precision(precision)
    if precision != "auto":
        return precision  # type: ignore[return-value]
    return "bf16" if native_bf16(device) else "fp32"


@contextlib.contextmanager
def precision_context(precision: Precision, device: torch.device) -> Iterator[None]:
    """cuDNN settings for the loop on CUDA: autotuned convolutions, TF32 only when asked.

    torch enables TF32 convolutions by default; "fp32" must turn it off to mean full float32.
    The Gram matrices are float32 matmuls, which torch keeps at full precision by default.
    """
    precision = resolve_precision(precision, device)
    if device.type != "cuda":
        yield
        return
    with torch.backends.cudnn.flags(
        enabled=True, benchmark=True, deterministic=False, allow_tf32=precision == "tf32"
    ):
        yield


def features_at(
    model: Callable[[Tensor], Mapping[str, Tensor]], precision: Precision
) -> Callable[[Tensor], Mapping[str, Tensor]]:  # precision already resolved (not "auto")
    """The feature stack at ``precision``: bf16 runs the convolutions under autocast.

    Features come out in bf16; :mod:`nst_batch.engine.losses` takes Gram matrices and losses in
    float32 (sums over H*W positions overflow bf16's precision at large images). The autocast
    cache is off because cached casts of the weights cannot live inside a CUDA graph.
    """
    check_precision(precision)
    if precision != "bf16":
        return model

    def forward(x: Tensor) -> Mapping[str, Tensor]:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, cache_enabled=False):
            return model(x)

    return forward


class Replay(Generic[T]):
    """Run ``step`` eagerly ``warmup`` times, then as a captured CUDA graph (CUDA only).

    ``step`` must take its inputs from tensors that stay in place (updated with ``copy_`` or
    in-place ops) and may return tensors: after capture the same (static) tensors are returned
    by every replay, refreshed; read or copy them before the next call.

    A capture or replay that fails (a driver without graph support, an op that cannot be
    captured) never fails the job: the graph is dropped, the failed call runs ``step`` eagerly
    and so do all later ones; :attr:`status` says ``"fallback: <reason>"``. A capture records
    kernels without running them, so the eager rerun is the step's one real execution.
    """

    def __init__(
        self,
        step: Callable[[], T],
        device: torch.device,
        enabled: bool = True,
        warmup: int = WARMUP_CALLS,
    ) -> None:
        self.step = step
        self.enabled = enabled and device.type == "cuda"
        self.device = device
        self.warmup = warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.fallback = ""  # why graphs were given up, if they were
        self._out: T | None = None
        self._stream: torch.cuda.Stream | None = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    @property
    def status(self) -> str:
        """The graphs' state: "on" (captured), "off" (not CUDA, disabled, not yet captured) or
        "fallback: <reason>"."""
        if self.fallback:
            return f"fallback: {self.fallback}"
        return "on" if self.graph is not None else "off"

    def __call__(self) -> T:
        self.calls += 1
        if not self.enabled:
            return self.step()
        if self.graph is None and self.calls <= self.warmup:
            return self._warm()  # an error here is the step's own: it propagates
        try:
            if self.graph is not None:
                self.graph.replay()
                return self._out  # type: ignore[return-value]
            return self._capture()
        except Exception as err:  # a driver or capture error: eager from now on
            self._give_up(f"{type(err).__name__}: {err}")
            return self.step()

    def _warm(self) -> T:
        """An eager call on the side stream the capture will use (as the docs require)."""
        stream = self._side_stream()
        with torch.cuda.stream(stream):
            out = self.step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        return out

    def _capture(self) -> T:
        stream = self._side_stream()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            self._out = self.step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.graph = graph
        graph.replay()  # capture records the kernels without running them
        return self._out  # type: ignore[return-value]

    def _side_stream(self) -> torch.cuda.Stream:
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        return self._stream

    def _give_up(self, reason: str) -> None:
        self.enabled, self.graph, self._out = False, None, None
        self.fallback = reason.strip().splitlines()[0] if reason.strip() else "unknown error"
        if self.device.type == "cuda" and torch.cuda.is_available():
            with contextlib.suppress(Exception):  # the eager path is what matters now
                torch.cuda.synchronize(self.device)
