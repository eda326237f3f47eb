"""The CuPy backend's decode step on the CPU emulator, behind the backend protocol: the CUDA C
kernels, called as the CuPy backend calls them (``kernels.cuda.calls.step_calls``), run on
the host in stream order (the stream first finishes what it holds), with the CPU device's
events and copies. A graph is the step's calls for
one bucket, recorded once over fixed buffers and run again at each launch, as a CUDA graph
replays its kernels. So the loops' invariants on the CUDA C kernels (the same tokens in every
mode; graph buckets whose padding rows touch only the spare slot and block) are tested on a
machine without a GPU."""

from __future__ import annotations

import dataclasses

import numpy as np

from schedbench.kernels.backend import DecodeStep, Graph, Stream
from schedbench.kernels.cpu.backend import CpuBackend, CpuStream
from schedbench.kernels.cuda import calls as kc
from schedbench.kernels.cuda.calls import KernelCall
from schedbench.kernels.layout import StepLayout
from schedbench.kernels.model import ModelConfig, interleave_gate_up, make_weights
from tests.support import cuda_emulator


class EmulatedStep(DecodeStep):
    def __init__(self, cfg: ModelConfig, seed: int, num_blocks: int, layout: StepLayout,
                 num_slots: int, gemm: kc.GemmCall, attention: kc.AttentionCall) -> None:
        self.cfg, self.layout, self.gemm, self.attention = cfg, layout, gemm, attention
        self.kernels_per_step = kc.kernels_per_step(cfg)
        self.pad_slot, self.pad_block = num_slots, num_blocks
        w16 = make_weights(cfg, seed, np.float32).astype(np.float16)
        self.weights = dataclasses.replace(w16, w_gate_up=interleave_gate_up(w16.w_gate_up))
        self.bufs = kc.StepBuffers.create(cfg, num_blocks, layout, num_slots, np)

    def calls(self, meta: np.ndarray, out_tokens: np.ndarray, batch_size: int) -> list[KernelCall]:
        return kc.step_calls(self.cfg, self.weights, self.bufs, self.layout, meta, out_tokens,
                             batch_size, self.gemm, self.attention)

    def launch(self, meta: np.ndarray, out_tokens: np.ndarray, batch_size: int,
               stream: Stream) -> None:
        run_in_order(stream, self.calls(meta, out_tokens, batch_size))


class EmulatedGraph(Graph):
    def __init__(self, calls: list[KernelCall]) -> None:
        self.calls = calls

    def launch(self, stream: Stream) -> None:
        run_in_order(stream, self.calls)


def run_in_order(stream: Stream, calls: list[KernelCall]) -> None:
    assert isinstance(stream, CpuStream)
    stream.synchronize()  # what the stream holds (the metadata upload) lands first
    cuda_emulator.run(*calls)


class EmulatedStream(CpuStream):
    def take_kernels(self, start, end) -> None:
        return None  # the kernels ran on the host, not the device: span only


class EmulatedCudaBackend(CpuBackend):
    """``gemm`` picks each projection's kernel, as ``cupy.selection.gemm_choice`` does
    on a GPU, and ``attention`` the attention's tiling."""

    name = "cuda-emulator"
    supports_graphs = True
    busy_source = "span"

    def __init__(self, gemm: kc.GemmCall = kc.gemm_call,
                 attention: kc.AttentionCall = kc.attention_call) -> None:
        super().__init__()
        self.gemm, self.attention = gemm, attention

    def stream(self) -> EmulatedStream:
        return EmulatedStream(self.device)

    def decode_step(self, cfg: ModelConfig, seed: int, num_blocks: int, layout: StepLayout,
                    num_slots: int) -> EmulatedStep:
        return EmulatedStep(cfg, seed, num_blocks, layout, num_slots, self.gemm, self.attention)

    def capture(self, step: DecodeStep, meta: np.ndarray, out_tokens: np.ndarray,
                batch_size: int, stream: Stream) -> EmulatedGraph:
        assert isinstance(step, EmulatedStep)
        return EmulatedGraph(step.calls(meta, out_tokens, batch_size))
