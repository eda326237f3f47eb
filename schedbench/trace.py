"""Chrome trace-event JSON (Perfetto, chrome://tracing) of every run's recorded steps.

One process per (mode, batch size) run; in each, a CPU track with every phase of every step,
one track per device stream (each step's span, first to last event, and its token copy) and,
where the backend reports them, a track with every kernel. All spans sit on one clock: the
host's ``perf_counter``, with device events placed on it through the engine's anchor event.
"""

from __future__ import annotations

from schedbench.sweep import RunResult

CPU, COMPUTE, COPY, KERNELS = 1, 2, 3, 4
THREADS = {CPU: "CPU: host thread", COMPUTE: "device: compute stream",
           COPY: "device: copy stream", KERNELS: "device: kernels"}


def _span(name: str, start: float, end: float, pid: int, tid: int, t0: float,
          **args: int) -> dict:
    return {"name": name, "ph": "X", "ts": (start - t0) * 1e6, "dur": (end - start) * 1e6,
            "pid": pid, "tid": tid, "args": args}


def chrome_trace(results: list[RunResult], title: str) -> dict:
    t0 = min((r.records[0].schedule_start for r in results if r.records), default=0.0)
    events: list[dict] = []
    for pid, run in enumerate(results, start=1):
        events.append({"name": "process_name", "ph": "M", "pid": pid,
                       "args": {"name": f"{run.mode}, batch {run.batch_size}"}})
        events.append({"name": "process_sort_index", "ph": "M", "pid": pid,
                       "args": {"sort_index": pid}})
        for tid, name in THREADS.items():
            events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                           "args": {"name": name}})
        for rec in run.records:
            ids = {"step": rec.index, "rows": rec.batch_size, "saturated": int(rec.saturated)}
            events += [
                _span("schedule", rec.schedule_start, rec.schedule_end, pid, CPU, t0, **ids),
                _span("launch", rec.schedule_end, rec.launch_end, pid, CPU, t0, **ids),
                _span("wait", rec.post_start, rec.wait_end, pid, CPU, t0, **ids),
                _span("postprocess", rec.wait_end, rec.post_end, pid, CPU, t0, **ids),
                _span(f"step {rec.index}", rec.device_start, rec.device_end, pid, COMPUTE, t0,
                      **ids),
                _span(f"tokens {rec.index} to host", rec.device_end, rec.copy_end, pid, COPY,
                      t0, **ids),
            ]
            if rec.kernels is not None:
                events += [_span(f"kernel {k}", start, end, pid, KERNELS, t0, kernel=k, **ids)
                           for k, (start, end) in enumerate(rec.kernels)]
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"title": title}}
