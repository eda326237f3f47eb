"""The ctypes mirrors of cuLaunchKernelEx's structures, checked against cuda.h without a GPU."""

from __future__ import annotations

import ctypes

from schedbench.kernels.cupy.launch_ex import (
    PROGRAMMATIC_STREAM_SERIALIZATION,
    LaunchAttribute,
    LaunchConfig,
    PdlEnqueue,
)


def test_layouts_match_cuda_h():
    # CUlaunchAttribute: {CUlaunchAttributeID id; char pad[4]; union (64 bytes) value}
    assert ctypes.sizeof(LaunchAttribute) == 72
    assert LaunchAttribute.value.offset == 8
    # CUlaunchConfig: 7 unsigned ints, then CUstream, CUlaunchAttribute*, unsigned int
    assert LaunchConfig.stream.offset == 32
    assert LaunchConfig.attrs.offset == 40
    assert LaunchConfig.num_attrs.offset == 48
    assert ctypes.sizeof(LaunchConfig) == 56


def test_the_pdl_attribute_is_set_in_the_struct_and_nowhere_else():
    empty = b""
    enqueue = PdlEnqueue(0x1234, (2, 3, 1), (256, 1, 1), 98304, "wide_gemm")
    raw = bytes(enqueue._attr)
    assert int.from_bytes(raw[:4], "little") == PROGRAMMATIC_STREAM_SERIALIZATION
    assert int.from_bytes(raw[8:12], "little") == 1  # programmaticStreamSerializationAllowed
    assert raw[12:] == bytes(60)
    config = enqueue._config
    assert (list(config.grid), list(config.block), config.shared_mem, config.num_attrs) == (
        [2, 3, 1], [256, 1, 1], 98304, 1)
    assert ctypes.addressof(config.attrs.contents) == ctypes.addressof(enqueue._attr)
    # an earlier version wrote the value into ctypes' copy of a char-array field: b""
    assert empty == b"" and len(empty) == 0 and ctypes.string_at(empty, 1) == b"\x00"
