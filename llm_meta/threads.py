"""How many threads torch computes with: the cores that no other process is using when a command
starts, and OpenMP threads that sleep rather than spin while they wait.

Why: an OpenMP parallel region ends when its slowest thread does. When another process shares a
core with one of our threads, that thread waits a scheduler time slice (milliseconds) in regions
that take microseconds, and a spinning thread takes CPU from the process it waits for. On 2 cores
with one competing process, `llm-meta adapt` at torch's default of 2 threads ran 1.9x slower than
with 1 thread, while on an idle machine 2 threads are 1.15-1.5x faster than 1 (experiments/BENCHMARKS.md,
"Threads on a busy machine"; `experiments/threads.py`).

Nothing here imports torch: the choice is made before torch is imported, through the environment
variables its OpenMP runtime reads (and `torch.set_num_threads` when it is already imported).
"""

from __future__ import annotations

import os
import resource
import sys
import time

ENV = "LLM_META_THREADS"  # an integer, or "auto" (the default)
SAMPLE_S = 0.1  # how long the other processes' CPU use is measured at start
_CHOSEN: list[str] = []  # the OMP_NUM_THREADS this module set (not the user's choice on a second call)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which a container or `taskset` narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _cpu_ticks(cores: set[int]) -> tuple[int, int]:
    """(busy, total) clock ticks of `cores` since boot, from /proc/stat (Linux)."""
    busy = total = 0
    with open("/proc/stat", encoding="ascii") as stat:
        for line in stat:
            name, *fields = line.split()
            if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cores:
                continue
            ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy, total


def busy_cores(window_s: float = SAMPLE_S) -> float:
    """Cores kept busy by other processes over the next `window_s` seconds (this process's own
    CPU time subtracted), e.g. 1.0 when one other process computes on one core. 0.0 where
    /proc/stat is not available (not Linux)."""
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    try:
        busy0, total0 = _cpu_ticks(cores)
        own0 = _own_cpu_s()
        time.sleep(window_s)
        busy1, total1 = _cpu_ticks(cores)
    except (OSError, ValueError):
        return 0.0
    if total1 <= total0:
        return 0.0
    tick_s = window_s * len(cores) / (total1 - total0)  # seconds per tick, whatever the clock rate
    others_s = (busy1 - busy0) * tick_s - (_own_cpu_s() - own0)
    return max(0.0, others_s / window_s)


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def choose_threads(requested: str | int | None = None) -> tuple[int, str]:
    """The number of threads to compute with, and why (for `-v` and the run's log).

    Order: `requested` (the `--threads` option), then the `LLM_META_THREADS` variable, then an
    `OMP_NUM_THREADS` the user set, then "auto": the usable cores less the cores other processes
    kept busy over `SAMPLE_S` (one core counts once half of it is busy), at least 1.

    Raises:
        ValueError: a value that is neither a positive integer nor "auto".
    """
    users_omp = os.environ.get("OMP_NUM_THREADS") if os.environ.get("OMP_NUM_THREADS") not in _CHOSEN else None
    for source, value in (("--threads", requested), (ENV, os.environ.get(ENV)), ("OMP_NUM_THREADS", users_omp)):
        if value is None or str(value).strip().lower() in ("", "auto"):
            continue
        try:
            count = int(value)
        except ValueError:
            count = 0
        if count < 1:
            raise ValueError(f"{source}={value!r}: give a number of threads (1 or more), or auto")
        if count > usable_cores():
            import logging

            logging.getLogger("llm_meta").warning("%s=%d is more threads than the %d core(s) this process may use: "
                                                  "they will wait for each other", source, count, usable_cores())
        return count, f"{source}={count}"
    cores, others = usable_cores(), busy_cores()
    count = max(1, cores - int(others + 0.5))
    return count, f"auto: {cores} core(s), {others:.1f} busy with other processes"


def configure_threads(requested: str | int | None = None) -> int:
    """Set the thread count of `choose_threads` for torch and its OpenMP runtime, and make waiting
    OpenMP threads sleep (`OMP_WAIT_POLICY=PASSIVE`, unless the user set it). Call before torch is
    imported for the wait policy to apply; the count applies either way.

    Returns:
        The number of threads torch will use.
    """
    count, why = choose_threads(requested)
    os.environ["OMP_NUM_THREADS"] = str(count)  # read by torch's OpenMP runtime when it loads
    _CHOSEN.append(str(count))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(count)
    import logging

    logging.getLogger("llm_meta").debug("threads: %d (%s)", count, why)
    return count
