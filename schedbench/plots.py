"""PNG figures of a sweep (matplotlib): overhead and throughput against batch size, the
step-time breakdown and a measured timeline of a few steps in each mode."""

from __future__ import annotations

from pathlib import Path

from schedbench.sweep import RunResult
from schedbench.timing import ideal_step_ms

COLORS = {"schedule": "#4c72b0", "launch": "#dd8452", "wait": "#c8c8c8",
          "postprocess": "#55a868", "kernel": "#8172b3", "idle in step": "#ddd5ee",
          "device span": "#8172b3", "copy": "#937860"}
MARKERS = {"sequential": "o", "overlapped": "s", "graphs": "^", "overlapped2": "D",
           "multistep": "v"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _phases(r: RunResult) -> tuple[float, float, float, float]:
    return tuple(r.figures[k].median for k in ("schedule_ms", "launch_ms", "compute_ms",
                                               "postprocess_ms"))  # type: ignore[return-value]


def _against_batch(results: list[RunResult], figure: str):
    """A figure with one measured line of ``figure`` per mode, against batch size."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for mode in dict.fromkeys(r.mode for r in results):
        runs = [r for r in results if r.mode == mode]
        ax.plot([r.batch_size for r in runs], [r.figures[figure].median for r in runs],
                marker=MARKERS.get(mode, "o"), label=f"{mode} (measured)")
    ax.set_xscale("log", base=2)
    sizes = sorted({r.batch_size for r in results})
    ax.set_xticks(sizes, [str(b) for b in sizes])  # the measured sizes, not powers 2^k
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xlabel("batch size")
    ax.grid(alpha=0.3, which="both")
    return fig, ax


def _save(fig, caption: str, path: Path, top: float = 1.0) -> None:
    """Caption, lay out and write the figure; a PNG is there whole or not at all."""
    fig.text(0.01, 0.01, caption, fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.04, 1, top))
    partial = path.with_name(f".{path.name}.partial")
    try:
        fig.savefig(partial, dpi=120, format="png")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
        _pyplot().close(fig)


def overhead_plot(results: list[RunResult], caption: str, path: Path) -> None:
    fig, ax = _against_batch(results, "overhead_pct")
    for overlapped, style in ((False, ":"), (True, "--")):
        runs = [r for r in results if r.mode == ("overlapped" if overlapped else "sequential")]
        ideal = []
        for r in runs:
            s, lau, c, p = _phases(r)
            ideal.append(100 * (1 - c / ideal_step_ms(overlapped, s, lau, c, p)))
        if runs:
            ax.plot([r.batch_size for r in runs], ideal, style, color="gray",
                    label=f"{'overlapped' if overlapped else 'sequential'} (ideal model)")
    ax.set_ylabel("overhead % (device idle / wall time)")
    ax.set_title("Scheduling overhead against batch size")
    ax.legend(fontsize=8)
    _save(fig, caption, path)


def throughput_plot(results: list[RunResult], caption: str, path: Path) -> None:
    """Tokens/s per mode, under the bound of a device that never idles: the tokens a step
    makes over its device compute, both measured in the overlapped run (else the first)."""
    fig, ax = _against_batch(results, "tokens_per_s")
    modes = list(dict.fromkeys(r.mode for r in results))
    basis = "overlapped" if "overlapped" in modes else modes[0]
    runs = [r for r in results if r.mode == basis]
    bound = [r.figures["tokens_per_s"].median * r.figures["step_ms"].median
             / r.figures["compute_ms"].median for r in runs]
    ax.plot([r.batch_size for r in runs], bound, "--", color="gray",
            label=f"device never idle (tokens per step / compute, {basis})")
    ax.set_yscale("log")
    ax.set_ylabel("tokens/s")
    ax.set_title("Throughput against batch size")
    ax.legend(fontsize=8)
    _save(fig, caption, path)


def breakdown_plot(results: list[RunResult], caption: str, path: Path) -> None:
    """Where each step's wall time goes on the host, with the device time beside it."""
    plt = _pyplot()
    modes = list(dict.fromkeys(r.mode for r in results))
    batches = sorted({r.batch_size for r in results})
    fig, axes = plt.subplots(1, len(batches), figsize=(3 * len(batches) + 1, 4.2),
                             squeeze=False)
    for ax, b in zip(axes[0], batches):
        runs = [r for r in results if r.batch_size == b]
        for x, r in enumerate(runs):
            bottom = 0.0
            for key in ("schedule", "launch", "wait", "postprocess"):
                v = r.figures[f"{key}_ms"].median
                ax.bar(x, v, bottom=bottom, color=COLORS[key], width=0.6,
                       label=key if x == 0 else None)
                bottom += v
            ax.plot([x - 0.3, x + 0.3], [r.figures["compute_ms"].median] * 2, color="black",
                    lw=2, label="device compute" if x == 0 else None)
        ax.set_xticks(range(len(runs)), [r.mode for r in runs], rotation=20, fontsize=8)
        ax.set_title(f"batch {b}")
        ax.set_ylabel("ms per step")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=7, ncol=len(labels))
    fig.suptitle(f"Host time per step, stacked, beside device compute ({', '.join(modes)})",
                 x=0.01, ha="left")
    _save(fig, caption, path, top=0.95)


def timeline_plot(results: list[RunResult], caption: str, path: Path, steps: int = 5) -> None:
    """A few steady-state steps of each mode at the smallest batch size, as measured."""
    plt = _pyplot()
    b = min(r.batch_size for r in results)
    runs = [r for r in results if r.batch_size == b]
    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 1.6 * len(runs) + 0.8), squeeze=False)
    used: set[str] = set()
    for ax, run in zip(axes[:, 0], runs):
        mid = len(run.records) // 2
        recs = run.records[mid:mid + steps]
        t0 = recs[0].schedule_start
        lanes = {"CPU": 2, "compute stream": 1, "copy stream": 0}
        for r in run.records:
            # the step's span, then each kernel over it where the backend knows them
            kernels = [] if r.kernels is None else [
                ("compute stream", a, z, "kernel") for a, z in r.kernels]
            spans = [("CPU", r.schedule_start, r.schedule_end, "schedule"),
                     ("CPU", r.schedule_end, r.launch_end, "launch"),
                     ("CPU", r.post_start, r.wait_end, "wait"),
                     ("CPU", r.wait_end, r.post_end, "postprocess"),
                     ("compute stream", r.device_start, r.device_end,
                      "device span" if r.kernels is None else "idle in step"),
                     *kernels,
                     ("copy stream", r.device_end, r.copy_end, "copy")]
            for lane, a, z, kind in spans:
                ax.broken_barh([((a - t0) * 1e3, (z - a) * 1e3)], (lanes[lane] - 0.4, 0.8),
                               color=COLORS[kind])
                used.add(kind)
            if recs[0].index <= r.index <= recs[-1].index:
                ax.text((r.device_start - t0) * 1e3, 1, f" {r.index}", va="center", fontsize=7,
                        color="white")
        end = max(max(r.post_end, r.copy_end) for r in recs)
        ax.set_xlim(0, (end - t0) * 1e3)
        ax.set_yticks(list(lanes.values()), list(lanes.keys()), fontsize=8)
        ax.set_title(f"{run.mode}, batch {b}: overhead {run.figures['overhead_pct'].median:.1f}%",
                     fontsize=9)
    axes[-1, 0].set_xlabel("ms (measured; one clock for host and device)")
    kinds = [k for k in COLORS if k in used]
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[k]) for k in kinds]
    fig.legend(handles, kinds, loc="upper right", fontsize=7, ncol=len(kinds))
    _save(fig, caption, path, top=0.94)


def write_plots(results: list[RunResult], caption: str, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {"overhead.png": overhead_plot, "throughput.png": throughput_plot,
             "breakdown.png": breakdown_plot, "timeline.png": timeline_plot}
    for name, plot in plots.items():
        plot(results, caption, out_dir / name)
    return [out_dir / name for name in plots]
