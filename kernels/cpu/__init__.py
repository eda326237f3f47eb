"""The CPU backend: a worker thread running Numba ``nogil`` kernels."""
