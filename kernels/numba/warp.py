"""Warp-wide operations and loads for the Numba kernels, each with a simulator twin so that
``NUMBA_ENABLE_CUDASIM=1`` runs the kernels that call them. Three are PTX that Numba has no
Python spelling for, written as Numba intrinsics (inline PTX through llvmlite, the way
numba-cuda writes its own cache-hinted loads): these two, and ``ldcg4`` below.

- ``ldg16(words, row, col, ok)``: words[row, col:col + 4] of a 2-D uint32 array in one
  16-byte load through the read-only path (``ld.global.nc.v4.u32``), zeros where ``ok`` is
  false (no access then). ``col`` is a multiple of 4 and rows are 16-byte aligned.
- ``mma_m16n8k16(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)``: the warp's
  ``mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32``, fp16 pairs in uint32 registers,
  returning d0..d3 = A.B + C. Lane (g, t) = (lane / 4, lane % 4) holds A(g, 2t..2t+1),
  A(g+8, 2t..), A(g, 2t+8..), A(g+8, 2t+8..) in a0..a3, B(2t..2t+1, g), B(2t+8.., g) in b0,
  b1, and C(g, 2t..2t+1), C(g+8, 2t..) in c0..c3 (the PTX ISA's fragment layouts; the first
  of a pair in the low half). Every lane of the warp calls it together (``.sync.aligned``).

and four are Numba's own shuffles over the full warp, which its simulator lacks:
``shfl_xor(v, mask)`` (lane l gets lane l ^ mask's v), ``shfl_idx(v, src)`` (lane src's),
and the butterfly reductions ``warp_max(v)`` and ``warp_sum(v)`` (every lane gets the warp's
max or sum, through five xor shuffles, so the sum's order is fixed; their twins run the same
butterfly, bit for bit, in one meeting of the lanes rather than five).

Two load by a flat offset: ``flat_load(ary, i)``, element i of a C-contiguous array counted
in flat order, and ``ldcg4(ary, i)``, its fp32 elements i..i+3 in one 16-byte load from L2
(``ld.global.cg.v4.f32``: not the SM's L1, which may hold an older line of data another block
wrote during the launch; i a multiple of 4, the array 16-byte aligned). Numba's N-D index
takes a 64-bit product by the array's runtime stride and a wraparound select per dimension,
and its ``reshape`` is a call into a function the dispatcher links in; a kernel that has the
flat offset already needs one address computation.

Why inline PTX: numba-cuda has no tensor-core operation and no vector load. The decode
projections at batch 16 need 16 FMAs per weight element, which Hopper's CUDA cores cannot
issue at memory speed (kernels/cuda/gemm.cu says why), so without mma the Numba GEMM ran 4-7x
behind the CUDA C one there, and the attention 2.5-5.5x (about 200 instructions a token and
kv head on CUDA cores, about 10 on tensor cores: kernels/cuda/attention.cu). NVIDIA's
numba-cuda issue #532 names an intrinsic with an ``ir.InlineAsm`` as today's way to write
inline PTX.

The simulator runs a block's threads as Python threads; each twin is a ``threading.Barrier``
of the warp's 32 lanes whose action computes every lane's result from the values they left
(about 10 ms a call: use them on small shapes).
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

from schedbench.kernels.numba import shim as numba_shim

numba_shim.apply()  # NOTE: before numba.cuda compiles anything

from numba import config, types  # noqa: E402


def _fragment_index() -> tuple[np.ndarray, ...]:
    """Where each lane's halves sit: A's (row, k) for a0..a3 (low, high half), B's (k, col)
    for b0, b1, and C's (row, col) for c0..c3, each indexed [lane, register(, half)]."""
    g, t = np.divmod(np.arange(32), 4)
    r, hi = np.arange(4)[None, :, None], np.arange(2)[None, None, :]
    g3, t3 = g[:, None, None], t[:, None, None]
    a_rows = np.broadcast_to(g3 + 8 * (r & 1), (32, 4, 2))
    a_cols = np.broadcast_to(2 * t3 + hi + 8 * (r >> 1), (32, 4, 2))
    b_rows = np.broadcast_to(2 * t3 + hi + 8 * r[:, :2], (32, 2, 2))
    b_cols = np.broadcast_to(g3, (32, 2, 2))
    i = np.arange(4)[None, :]
    c_rows, c_cols = g[:, None] + 8 * (i >> 1), 2 * t[:, None] + (i & 1)
    return a_rows, a_cols, b_rows, b_cols, c_rows, c_cols


_A_ROWS, _A_COLS, _B_ROWS, _B_COLS, _C_ROWS, _C_COLS = _fragment_index()


def mma_fragments(regs: np.ndarray, c: np.ndarray) -> np.ndarray:
    """d0..d3 of every lane of one m16n8k16 MMA, [lane, 4] fp32, from each lane's registers
    ``regs`` [lane, 6] (a0..a3, b0, b1; uint32) and accumulators ``c`` [lane, 4], in the
    layouts above. fp16 products are exact; each output's 16 are summed in float64 and
    rounded once, then added to C in fp32."""
    halves = regs.astype(np.uint32).view(np.float16).reshape(32, 6, 2).astype(np.float64)
    a, b = np.empty((16, 16)), np.empty((16, 8))
    a[_A_ROWS, _A_COLS] = halves[:, :4]
    b[_B_ROWS, _B_COLS] = halves[:, 4:]
    return c.astype(np.float32) + (a @ b)[_C_ROWS, _C_COLS].astype(np.float32)


class _Warp:
    """Where one simulated warp's lanes meet: each leaves its value, the last to arrive runs
    ``op`` on all 32 before any leaves, and each takes its result."""

    def __init__(self) -> None:
        self.values: list = [None] * 32
        self.results: list = []
        self.op = None
        # a lane that dies before the meeting leaves the others a broken barrier, not a hang
        self.barrier = threading.Barrier(32, action=self._run, timeout=120)

    def _run(self) -> None:
        self.results = self.op(self.values)


_warps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # block -> {warp: _Warp}
_warps_lock = threading.Lock()


def _collective(op, value):
    """This lane's result of ``op`` (32 lanes' values -> 32 results) over its warp."""
    thread = threading.current_thread()  # NOTE: the simulator's BlockThread (numba-cuda 0.30)
    warp_id, lane = divmod(thread.thread_id, 32)
    with _warps_lock:
        warp = _warps.setdefault(thread._manager, {}).setdefault(warp_id, _Warp())
    warp.values[lane], warp.op = value, op  # one op for all: what differs is in the value
    warp.barrier.wait()
    return warp.results[lane]


def _mma_all(values: list) -> np.ndarray:
    return mma_fragments(np.array([v[:6] for v in values], np.uint32),
                         np.array([v[6:] for v in values], np.float32))


def _simulated_mma(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
    d = _collective(_mma_all, (a0, a1, a2, a3, b0, b1, c0, c1, c2, c3))
    return d[0], d[1], d[2], d[3]


def _shuffle_all(values: list) -> list:  # each lane's (value, source lane)
    return [values[src][0] for _, src in values]


def _simulated_shfl_xor(v, mask):
    return _collective(_shuffle_all, (v, (threading.current_thread().thread_id % 32) ^ mask))


def _simulated_shfl_idx(v, src):
    return _collective(_shuffle_all, (v, src % 32))


def _butterfly(op):
    def all_lanes(values: list) -> list:
        v, lanes = np.array(values, np.float32), np.arange(32)
        for i in range(5):
            v = op(v, v[lanes ^ (16 >> i)])
        return list(v)

    return all_lanes


_max_all, _sum_all = _butterfly(np.maximum), _butterfly(np.add)


def _simulated_warp_max(v):
    return _collective(_max_all, v)


def _simulated_warp_sum(v):
    return _collective(_sum_all, v)


def _sixteen_bytes(four: np.ndarray, what: str) -> tuple:
    """The four 4-byte words of a 16-byte load, refused where a GPU's load would fault."""
    if four.shape != (4,) or four.strides != (4,) or four.ctypes.data % 16:
        raise ValueError(f"{what} are not 16 contiguous bytes at a multiple of 16, which a "
                         f"GPU's 16-byte load faults on")
    return four[0], four[1], four[2], four[3]


def _simulated_ldg16(words, row, col, ok):
    if not ok:
        return (np.uint32(0),) * 4
    # NOTE: the simulator's array wraps the host one
    return _sixteen_bytes(words[row, col:col + 4]._ary, f"ldg16: words[{row}, {col}:{col + 4}]")


def _simulated_flat_load(ary, i):
    host = ary._ary  # NOTE: the simulator's array wraps the host one
    if not host.flags.c_contiguous:
        raise ValueError("flat_load: the array is not C-contiguous")
    return host.reshape(-1)[i]


def _simulated_ldcg4(ary, i):
    host = ary._ary  # NOTE: the simulator's array wraps the host one
    if host.dtype != np.float32 or not host.flags.c_contiguous:
        layout = "" if host.flags.c_contiguous else ", not C-contiguous"
        raise ValueError(f"ldcg4: a {host.dtype} array{layout}; it reads C-contiguous fp32")
    return _sixteen_bytes(host.reshape(-1)[i:i + 4], f"ldcg4: elements {i}..{i + 3}")


def _intrinsics():
    from llvmlite import ir
    from numba.cuda import cgutils
    from numba.cuda.extending import intrinsic

    i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()

    def flat_pointer(context, builder, sig, args):
        """The address of element args[1], by flat offset, of the C-contiguous array
        args[0]: one GEP, no strides."""
        aryty, ity = sig.args
        data = context.make_array(aryty)(context, builder, value=args[0]).data
        return builder.gep(data, [context.cast(builder, args[1], ity, types.intp)],
                           inbounds=True)

    def four(context, builder, sig, got):
        """An asm's four outputs as the intrinsic's 4-tuple."""
        return context.make_tuple(builder, sig.return_type,
                                  [builder.extract_value(got, i) for i in range(4)])

    @intrinsic
    def ldg16(typingctx, words, row, col, ok):
        if not (isinstance(words, types.Array) and words.dtype == types.uint32
                and words.ndim == 2):
            return None
        sig = types.UniTuple(types.uint32, 4)(words, row, col, ok)

        def codegen(context, builder, sig, args):
            aryty, rowty, colty, okty = sig.args
            ary = context.make_array(aryty)(context, builder, value=args[0])
            index = [context.cast(builder, v, t, types.intp)
                     for v, t in ((args[1], rowty), (args[2], colty))]
            ptr = cgutils.get_item_pointer(context, builder, aryty, ary, index,
                                           wraparound=False)
            pred = context.cast(builder, args[3], okty, types.int32)
            fnty = ir.FunctionType(ir.LiteralStructType([i32] * 4), [i64, i32])
            asm = ir.InlineAsm(
                fnty,
                "{\n .reg .pred p;\n setp.ne.b32 p, $5, 0;\n"
                " mov.b32 $0, 0;\n mov.b32 $1, 0;\n mov.b32 $2, 0;\n mov.b32 $3, 0;\n"
                " @p ld.global.nc.v4.u32 {$0, $1, $2, $3}, [$4];\n}",
                "=r,=r,=r,=r,l,r")
            return four(context, builder, sig,
                        builder.call(asm, [builder.ptrtoint(ptr, i64), pred]))

        return sig, codegen

    @intrinsic
    def flat_load(typingctx, ary, i):
        if not (isinstance(ary, types.Array) and ary.layout == "C"
                and isinstance(i, types.Integer)):
            return None
        sig = ary.dtype(ary, i)

        def codegen(context, builder, sig, args):
            return builder.load(flat_pointer(context, builder, sig, args))

        return sig, codegen

    @intrinsic
    def ldcg4(typingctx, ary, i):
        if not (isinstance(ary, types.Array) and ary.layout == "C"
                and ary.dtype == types.float32 and isinstance(i, types.Integer)):
            return None
        sig = types.UniTuple(types.float32, 4)(ary, i)

        def codegen(context, builder, sig, args):
            ptr = flat_pointer(context, builder, sig, args)
            fnty = ir.FunctionType(ir.LiteralStructType([f32] * 4), [i64])
            # side_effect: LLVM must not move it above the fence and count that make the
            # data complete, as it may move an asm that reads nothing it can see
            asm = ir.InlineAsm(fnty, "ld.global.cg.v4.f32 {$0, $1, $2, $3}, [$4];",
                               "=f,=f,=f,=f,l", side_effect=True)
            return four(context, builder, sig, builder.call(asm, [builder.ptrtoint(ptr, i64)]))

        return sig, codegen

    @intrinsic
    def mma_m16n8k16(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        sig = types.UniTuple(types.float32, 4)(*[types.uint32] * 6, *[types.float32] * 4)

        def codegen(context, builder, sig, args):
            fnty = ir.FunctionType(ir.LiteralStructType([f32] * 4), [i32] * 6 + [f32] * 4)
            asm = ir.InlineAsm(
                fnty,
                "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {$0, $1, $2, $3}, "
                "{$4, $5, $6, $7}, {$8, $9}, {$10, $11, $12, $13};",
                "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f")
            # convergent, as nvcc and clang mark every call in device code: no pass may move
            # an instruction the whole warp must issue together into a divergent branch
            # args: numba cast them to sig's
            return four(context, builder, sig, builder.call(asm, args, attrs=("convergent",)))

        return sig, codegen

    return ldg16, flat_load, ldcg4, mma_m16n8k16


def _shuffles():
    from numba import cuda

    @cuda.jit(device=True)
    def shfl_xor(v, mask):  # pragma: no cover - device code
        return cuda.shfl_xor_sync(0xFFFFFFFF, v, mask)

    @cuda.jit(device=True)
    def shfl_idx(v, src):  # pragma: no cover - device code
        return cuda.shfl_sync(0xFFFFFFFF, v, src)

    @cuda.jit(device=True)
    def warp_max(v):  # pragma: no cover - device code
        for i in range(5):
            v = max(v, shfl_xor(v, 16 >> i))
        return v

    @cuda.jit(device=True)
    def warp_sum(v):  # pragma: no cover - device code
        for i in range(5):
            v += shfl_xor(v, 16 >> i)
        return v

    return shfl_xor, shfl_idx, warp_max, warp_sum


if config.ENABLE_CUDASIM:
    ldg16, flat_load, mma_m16n8k16 = _simulated_ldg16, _simulated_flat_load, _simulated_mma
    ldcg4 = _simulated_ldcg4
    shfl_xor, shfl_idx = _simulated_shfl_xor, _simulated_shfl_idx
    warp_max, warp_sum = _simulated_warp_max, _simulated_warp_sum
else:
    ldg16, flat_load, ldcg4, mma_m16n8k16 = _intrinsics()
    shfl_xor, shfl_idx, warp_max, warp_sum = _shuffles()
