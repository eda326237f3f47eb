"""Device side of schedbench: one decode step as kernels, per backend."""
