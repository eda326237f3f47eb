"""Device side of schedbench, installed as ``schedbench.kernels``: one decode step as kernels,
per backend. It knows nothing of the harness above it (scheduler, engine, timing, report)."""
