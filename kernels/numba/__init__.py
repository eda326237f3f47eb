"""The Numba CUDA backend: the decode step as Numba CUDA kernels (GPU or simulator)."""
