"""The CuPy backend: the CUDA C kernels of ``kernels/cuda`` through RawModule, packed driver
launches, CUDA streams, events and graphs."""
