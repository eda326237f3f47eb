"""The CUDA C kernels (``*.cu``), their loader and their launch calls."""
