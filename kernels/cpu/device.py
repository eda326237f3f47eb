"""The CPU "device": one worker thread that runs a Numba ``nogil`` loop over command queues.

A GPU runs what the host enqueues, in order per stream, without asking the host for
anything; the host only appends. This device does the same. Each stream is a ring of
fixed-size commands (a kernel launch, an event record, a wait on another stream's event, a
copy, a graph replay) that the host appends and the worker executes. The worker never takes
the GIL, so a kernel launch costs the host one append, a host busy in Python starves the
device exactly as a slow launcher starves a GPU, and the worker stamps every kernel's start
and end on the host's clock (``CLOCK_MONOTONIC``, what ``time.perf_counter`` reads).

The worker spins while there was work in the last ``SPIN_S`` (it sees a new command within
microseconds, not a thread wake-up's tens), then polls every ``NAP_US``: an idle device does
not hold a core. The host keeps the other core of a 2-core machine.

Commands are rows of ``WORDS`` int64: the opcode, then its arguments (addresses of arrays,
their sizes, a float as its bits). Every array a command names must stay alive until the
command has run; the decode step and the engine keep theirs for their lifetime.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from schedbench.kernels.backend import KERNELS_KEPT
from schedbench.kernels.cpu import kernels as k
from schedbench.kernels.errors import ConfigError

WORDS = 24  # int64 words a command
RING = 1 << 12  # commands a stream holds before the host must wait for the worker
KERNEL_LOG = KERNELS_KEPT  # kernel intervals a stream keeps until the host takes them
MAX_STREAMS = 32
MAX_EVENTS = 1 << 12
GRAPH_ROWS = 1 << 15  # the commands of every captured graph, together
SPIN_S = 2e-3
NAP_US = 50

(NOP, RECORD, WAIT, COPY, GRAPH, EMBED, RMSNORM, LINEAR, ROPE_APPEND, ATTENTION, SILU_MUL,
 ARGMAX, SPIN, SYNTH_TOKENS) = range(14)

CLOCK_MONOTONIC = 1  # Linux's number for it
_I32, _I64 = ir.IntType(32), ir.IntType(64)


def _libc(builder, name: str, ret: ir.Type, *args: ir.Type):
    """A C library function, declared by name: the JIT links it, and a cached build keeps
    no address of this process's."""
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


@intrinsic
def clock_ns(typingctx):
    """``clock_gettime(CLOCK_MONOTONIC)`` in nanoseconds: ``time.perf_counter``'s clock."""
    sig = types.int64()

    def codegen(context, builder, signature, args):
        timespec = ir.LiteralStructType([_I64, _I64])
        ts = cgutils.alloca_once(builder, timespec)
        builder.call(_libc(builder, "clock_gettime", _I32, _I32, timespec.as_pointer()),
                     [ir.Constant(_I32, CLOCK_MONOTONIC), ts])
        sec = builder.load(cgutils.gep_inbounds(builder, ts, 0, 0))
        nsec = builder.load(cgutils.gep_inbounds(builder, ts, 0, 1))
        return builder.add(builder.mul(sec, ir.Constant(_I64, 10**9)), nsec)

    return sig, codegen


@intrinsic
def usleep(typingctx, us):
    sig = types.void(types.int64)

    def codegen(context, builder, signature, args):
        builder.call(_libc(builder, "usleep", _I32, _I32), [builder.trunc(args[0], _I32)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def load_acquire(typingctx, arr, idx):
    """``arr[idx]``, read with acquire ordering: a fresh load every call, and what the
    writer stored before its release is visible after it."""
    sig = arr.dtype(arr, types.intp)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        size = context.get_abi_sizeof(context.get_value_type(signature.args[0].dtype))
        return builder.load_atomic(builder.gep(ary.data, [args[1]]), "acquire", size)

    return sig, codegen


@intrinsic
def store_release(typingctx, arr, idx, value):
    """``arr[idx] = value`` with release ordering: every store before it is visible first."""
    sig = types.void(arr, types.intp, arr.dtype)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        size = context.get_abi_sizeof(context.get_value_type(signature.args[0].dtype))
        builder.store_atomic(args[2], builder.gep(ary.data, [args[1]]), "release", size)
        return context.get_dummy_value()

    return sig, codegen


def _pointer_to(dtype):
    @intrinsic
    def pointer(typingctx, address):
        sig = types.CPointer(dtype)(types.int64)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

        return sig, codegen

    return pointer


f32 = _pointer_to(types.float32)
i32 = _pointer_to(types.int32)
u8 = _pointer_to(types.uint8)
_JIT = {"nogil": True, "cache": True}


@njit(**_JIT)
def now():  # pragma: no cover - compiled
    return clock_ns() * 1e-9


@njit(**_JIT)
def push(cmds, heads, tails, stream, cmd):  # pragma: no cover - compiled
    """Append ``cmd`` to a stream's ring, whole or not at all as the worker sees it;
    False where the ring is full."""
    h = heads[stream]
    if h - load_acquire(tails, stream) >= RING:
        return False
    cmds[stream, h % RING, :] = cmd
    store_release(heads, stream, h + 1)
    return True


@njit(**_JIT)
def push_copy(cmds, heads, tails, stream, dst, src):  # pragma: no cover - compiled
    """``push`` of a COPY, built here: reading two addresses costs Python microseconds."""
    h = heads[stream]
    if h - load_acquire(tails, stream) >= RING:
        return False
    row = cmds[stream, h % RING]
    row[0], row[1], row[2], row[3] = COPY, dst.ctypes.data, src.ctypes.data, src.nbytes
    store_release(heads, stream, h + 1)
    return True


@njit(**_JIT)
def push_event(cmds, heads, tails, stream, op, event, seq):  # pragma: no cover - compiled
    """``push`` of a RECORD or WAIT, built here: an event's commands change at every use."""
    h = heads[stream]
    if h - load_acquire(tails, stream) >= RING:
        return False
    row = cmds[stream, h % RING]
    row[0], row[1], row[2] = op, event, seq
    store_release(heads, stream, h + 1)
    return True


@njit(**_JIT)
def run_kernel(c):  # pragma: no cover - compiled
    op, b = c[0], c[1]
    f = c.view(np.float64)
    if op == EMBED:  # b, ids, slots, token_buf, n_slots, table, vocab, hidden, x
        k.embed(carray(i32(c[2]), b), carray(i32(c[3]), b), carray(i32(c[4]), c[5]),
                carray(f32(c[6]), (c[7], c[8])), carray(f32(c[9]), (b, c[8])))
    elif op == RMSNORM:  # b, n, x, w, out, eps
        k.rms_norm(carray(f32(c[3]), (b, c[2])), carray(f32(c[4]), c[2]), np.float32(f[6]),
                   carray(f32(c[5]), (b, c[2])))
    elif op == LINEAR:  # b, k, n, x, w, out, accumulate
        k.linear(carray(f32(c[4]), (b, c[2])), carray(f32(c[5]), (c[3], c[2])),
                 carray(f32(c[6]), (b, c[3])), c[7] != 0)
    elif op == ROPE_APPEND or op == ATTENTION:
        # b, qkv, width, positions, tables, max_blocks, k_cache, v_cache, blocks, block_size,
        # heads, kv_heads, head_dim, theta (rope) | scores, context, out (attention)
        qkv = carray(f32(c[2]), (b, c[3]))
        positions, tables = carray(i32(c[4]), b), carray(i32(c[5]), (b, c[6]))
        shape = (c[9], c[10], c[12], c[13])
        kc, vc = carray(f32(c[7]), shape), carray(f32(c[8]), shape)
        if op == ROPE_APPEND:
            k.rope_kv_append(qkv, positions, tables, kc, vc, c[11], c[12], c[13], f[14])
        else:
            k.paged_attention(qkv, positions, tables, kc, vc, c[11], c[12], c[13],
                              carray(f32(c[14]), c[15]), carray(f32(c[16]), (b, c[11] * c[13])))
    elif op == SILU_MUL:  # b, inter, gate_up, out
        k.silu_mul(carray(f32(c[3]), (b, 2 * c[2])), carray(f32(c[4]), (b, c[2])))
    elif op == ARGMAX:  # b, vocab, logits, slots, token_buf, n_slots, out
        k.argmax_tokens(carray(f32(c[3]), (b, c[2])), carray(i32(c[4]), b),
                        carray(i32(c[5]), c[6]), carray(i32(c[7]), b))
    elif op == SPIN:  # _, seconds
        end = now() + f[2]
        while now() < end:
            k.spin(2000)
    elif op == SYNTH_TOKENS:  # b, ids, slots, positions, token_buf, n_slots, out, vocab
        k.synthetic_tokens(carray(i32(c[2]), b), carray(i32(c[3]), b), carray(i32(c[4]), b),
                           carray(i32(c[5]), c[6]), carray(i32(c[7]), b), c[8])
    else:
        raise ValueError("the CPU device got an unknown command")


@njit(**_JIT)
def execute(c, stream, ev_time, ev_seq, klog, kcount):  # pragma: no cover - compiled
    op = c[0]
    if op == RECORD:  # event, seq
        ev_time[c[1]] = now()
        store_release(ev_seq, c[1], c[2])
    elif op == COPY:  # dst, src, bytes
        carray(u8(c[1]), c[3])[:] = carray(u8(c[2]), c[3])
    else:
        start = now()
        run_kernel(c)
        end = now()
        n = kcount[stream]
        klog[stream, n % KERNEL_LOG, 0] = start
        klog[stream, n % KERNEL_LOG, 1] = end
        store_release(kcount, stream, n + 1)


@njit(**_JIT)
def work(cmds, heads, tails, nstreams, ev_time, ev_seq, klog, kcount, graphs,
         stop):  # pragma: no cover - compiled
    """The device: run every stream's commands in order until ``stop[0]`` is set."""
    idle_since = -1.0
    while load_acquire(stop, 0) == 0:
        ran = False
        for s in range(load_acquire(nstreams, 0)):
            t = tails[s]
            if t == load_acquire(heads, s):
                continue
            c = cmds[s, t % RING]
            op = c[0]
            if op == WAIT and load_acquire(ev_seq, c[1]) < c[2]:
                continue  # this stream waits; the others go on
            if op == GRAPH:  # first row, rows
                for g in range(c[1], c[1] + c[2]):
                    execute(graphs[g], s, ev_time, ev_seq, klog, kcount)
            elif op != WAIT and op != NOP:
                execute(c, s, ev_time, ev_seq, klog, kcount)
            store_release(tails, s, t + 1)
            ran = True
        if ran:
            idle_since = -1.0
        elif idle_since < 0:
            idle_since = now()
        elif now() - idle_since > SPIN_S:
            usleep(NAP_US)


def command(op: int, *args: int | float | np.ndarray) -> np.ndarray:
    """One command: ints as they are, floats as their bits, arrays as their address."""
    row = np.zeros(WORDS, np.int64)
    row[0] = op
    for i, a in enumerate(args, 1):
        if isinstance(a, np.ndarray):
            assert a.flags.c_contiguous, "a command's arrays are contiguous"
            row[i] = a.ctypes.data
        elif isinstance(a, float):
            row[i] = np.float64(a).view(np.int64)
        else:
            row[i] = a
    return row


class DeviceError(RuntimeError):
    """The device's worker stopped on an error."""


class CpuDevice:
    """The worker and the memory it shares with the host: command rings, event stamps,
    kernel stamps and captured graphs."""

    def __init__(self) -> None:
        clock = time.get_clock_info("perf_counter").implementation
        if clock != "clock_gettime(CLOCK_MONOTONIC)":
            raise ConfigError(f"the cpu backend's device stamps kernels with Linux's "
                              f"CLOCK_MONOTONIC, and perf_counter here reads {clock}")
        self.cmds = np.zeros((MAX_STREAMS, RING, WORDS), np.int64)
        self.heads = np.zeros(MAX_STREAMS, np.int64)
        self.tails = np.zeros(MAX_STREAMS, np.int64)
        self.nstreams = np.zeros(1, np.int64)
        self.ev_time = np.zeros(MAX_EVENTS)
        self.ev_seq = np.zeros(MAX_EVENTS, np.int64)
        self.klog = np.zeros((MAX_STREAMS, KERNEL_LOG, 2))
        self.kcount = np.zeros(MAX_STREAMS, np.int64)
        self.graphs = np.zeros((GRAPH_ROWS, WORDS), np.int64)
        self.stop = np.zeros(1, np.int64)
        self.graph_rows = 0
        self._free_events = list(range(MAX_EVENTS - 1, -1, -1))
        self._free_streams: list[int] = []
        self._capture: list[np.ndarray] | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="schedbench-cpu-device",
                                         daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            work(self.cmds, self.heads, self.tails, self.nstreams, self.ev_time, self.ev_seq,
                 self.klog, self.kcount, self.graphs, self.stop)
        except BaseException as exc:
            self.error = exc

    def check(self) -> None:
        if not self._thread.is_alive() and self.error is not None:
            raise DeviceError(f"the CPU device stopped: {self.error!r}") from self.error

    def new_stream(self, owner: object) -> int:
        """A stream's ring for ``owner``, back in the pool when the owner is gone (its last
        commands still run first)."""
        if self._free_streams:
            s = self._free_streams.pop()
        elif (s := int(self.nstreams[0])) < MAX_STREAMS:
            self.nstreams[0] = s + 1  # the worker reads it with acquire; nothing to publish
        else:
            raise DeviceError(f"the CPU device has {MAX_STREAMS} streams at most")
        weakref.finalize(owner, self._free_streams.append, s)
        return s

    def new_event(self, owner: object) -> int:
        """An event's slot for ``owner``, back in the pool when the owner is gone."""
        if not self._free_events:
            raise DeviceError(f"the CPU device has {MAX_EVENTS} events at most")
        event = self._free_events.pop()
        self.ev_seq[event] = 0
        weakref.finalize(owner, self._free_events.append, event)
        return event

    def enqueue(self, stream: int, cmd: np.ndarray) -> None:
        """Append a command; while a graph is being captured, record it instead."""
        if self._capture is not None:
            self._capture.append(cmd.copy())
            return
        while not push(self.cmds, self.heads, self.tails, stream, cmd):
            self.check()  # the ring is full: the device is that far behind

    def enqueue_copy(self, stream: int, dst: np.ndarray, src: np.ndarray) -> None:
        """``enqueue`` of a copy of ``src`` over ``dst`` (contiguous, the same size)."""
        if self._capture is not None:
            self._capture.append(command(COPY, dst, src, src.nbytes))
            return
        while not push_copy(self.cmds, self.heads, self.tails, stream, dst, src):
            self.check()

    def enqueue_event(self, stream: int, op: int, event: int, seq: int) -> None:
        """``enqueue`` of RECORD or WAIT of ``event``'s ``seq``-th record."""
        if self._capture is not None:
            self._capture.append(command(op, event, seq))
            return
        while not push_event(self.cmds, self.heads, self.tails, stream, op, event, seq):
            self.check()

    @contextmanager
    def capture(self) -> Iterator[list[np.ndarray]]:
        """Commands enqueued inside are recorded, not run: a graph's body."""
        self._capture = recorded = []
        try:
            yield recorded
        finally:
            self._capture = None

    def store_graph(self, rows: list[np.ndarray]) -> tuple[int, int]:
        """Keep a graph's commands on the device; its (first row, rows) for GRAPH."""
        if any(int(r[0]) in (WAIT, GRAPH) for r in rows):
            raise DeviceError("a CPU graph holds kernels, copies and event records only")
        first = self.graph_rows
        if first + len(rows) > GRAPH_ROWS:
            raise DeviceError(f"the CPU device holds {GRAPH_ROWS} graph commands at most")
        self.graphs[first:first + len(rows)] = rows
        self.graph_rows += len(rows)
        return first, len(rows)

    def wait_for(self, event: int, seq: int) -> None:
        """Block the host until the device has recorded ``event`` for the ``seq``-th time.
        A spin, as CUDA's default, in Python, so that Ctrl-C still interrupts it."""
        spins = 0
        while self.ev_seq[event] < seq:
            spins += 1
            if spins % 4096 == 0:
                self.check()
                if not self._thread.is_alive():
                    raise DeviceError("the CPU device's worker is gone")

    def take_kernels(self, stream: int, taken: int, until: float) -> tuple[np.ndarray, int]:
        """Kernels of ``stream`` stamped since the ``taken``-th that ended by ``until``, as
        (start, end) rows, and the new count taken."""
        n = int(self.kcount[stream])
        if n - taken > KERNEL_LOG:
            raise DeviceError(f"{n - taken} kernel stamps were not taken in time: the log "
                              f"holds {KERNEL_LOG}")
        rows = self.klog[stream, np.arange(taken, n) % KERNEL_LOG]
        keep = int(np.searchsorted(rows[:, 1], until, side="right"))
        return rows[:keep].copy(), taken + keep

    def close(self) -> None:
        """Stop the worker where it is: what the streams still hold is dropped."""
        store(self.stop, 0, 1)
        self._thread.join()


@njit(**_JIT)
def store(arr, index, value):  # pragma: no cover - compiled
    store_release(arr, index, value)
