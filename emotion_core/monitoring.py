"""Device sampling during training: what the run used, not just what the machine has.

- ``DeviceMonitor`` (a context manager, or ``start``/``stop``) samples in a daemon thread every ``interval_s``;
  ``snapshot()`` is the latest sample, ``summary()`` the whole window (running aggregates: flat memory).
- Every sample: host, pid, device name, this process's RSS and CPU %; CUDA: memory total/used/free,
  allocated and peak allocated, utilisation (NVML); CPU: model, cores, torch threads, RAM. Memory in GiB.

Limits: one device; ``utilization_percent`` is NVML's whole-GPU figure, ``None`` without ``nvidia-ml-py``;
``peak_rss_gib`` is the process's high-water mark; a failed sample is logged once and skipped, never raised.
"""

from __future__ import annotations

import logging
import os
import platform
import resource
import socket
import sys
import threading
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)
GIB = 1024**3


def _gib(value: float) -> float:
    return round(float(value) / GIB, 3)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``/machine."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _rss_bytes() -> int | None:
    """Current resident set size without psutil (Linux ``/proc/self/statm``: pages)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _system_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return None


class DeviceMonitor:
    """Samples the training device in a background thread; see the module docstring."""

    def __init__(self, interval_s: float = 5.0, device: int | None = None) -> None:
        self.interval_s = interval_s
        self.kind = "cuda" if torch.cuda.is_available() else "cpu"
        self.note: str | None = None  # why a figure is missing (e.g. no NVML); set once
        self._lock = threading.Lock()  # guards the aggregates and the latest sample
        self._cpu_lock = threading.Lock()  # guards the CPU-% reference point
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sample_failed = False
        self._latest: dict | None = None
        self._count = 0
        self._started_at: float | None = None
        self._util_sum, self._util_n, self._util_peak = 0.0, 0, None
        self._peaks: dict[str, float] = {}
        # Static facts once, here in the constructing (training) thread: the current CUDA device is
        # per thread, so the sampling thread would otherwise see device 0.
        self._static = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }
        if self.kind == "cuda":
            self._nvml_ok = True
            try:
                self.index = torch.cuda.current_device() if device is None else device
                self._static.update(
                    name=torch.cuda.get_device_name(self.index),
                    index=self.index,
                    memory_total_gib=_gib(torch.cuda.get_device_properties(self.index).total_memory),
                )
            except Exception as exc:  # a device that cannot be queried: the samples will fail quietly too
                self.index = 0 if device is None else device
                self._static.update(name=None, index=self.index, memory_total_gib=None)
                self.note = f"CUDA device facts unavailable: {type(exc).__name__}: {exc}"
        else:
            self.index = None
            memory = _system_memory_bytes()
            self._static.update(
                name=cpu_model(),
                logical_cores=os.cpu_count(),
                memory_total_gib=None if memory is None else _gib(memory),
            )
        try:
            import psutil

            self._process = psutil.Process()
            self._process.cpu_percent(None)  # the first call only starts psutil's interval
        except Exception:  # psutil not installed: CPU % from os.times() deltas instead
            self._process = None
        self._cpu_mark = (time.monotonic(), self._cpu_seconds())

    # -- sampling ---------------------------------------------------------------------------------
    @staticmethod
    def _cpu_seconds() -> float:
        t = os.times()
        return t.user + t.system

    def _process_cpu_percent(self) -> float | None:
        """CPU % since the previous sample; both ways keep state, and snapshot() may sample from
        another thread, hence the lock."""
        with self._cpu_lock:
            if self._process is not None:
                return round(self._process.cpu_percent(None), 1)
            now, cpu = time.monotonic(), self._cpu_seconds()
            (then, cpu_then), self._cpu_mark = self._cpu_mark, (now, cpu)
        return round(100.0 * (cpu - cpu_then) / (now - then), 1) if now - then > 1e-3 else None

    def sample(self) -> dict:
        """One sample now (not recorded); may raise: ``snapshot()`` and the thread never do."""
        rss = self._process.memory_info().rss if self._process is not None else _rss_bytes()
        current = {
            "time": round(time.time(), 3),
            "kind": self.kind,
            **self._static,
            "process_cpu_percent": self._process_cpu_percent(),
            "rss_gib": None if rss is None else _gib(rss),
            "peak_rss_gib": _gib(_peak_rss_bytes()),
        }
        if self.kind == "cuda":
            current.update(self._cuda())
        else:
            current["torch_threads"] = torch.get_num_threads()
        return current

    def _cuda(self) -> dict:
        cuda, index = torch.cuda, self.index
        free, total = cuda.mem_get_info(index)
        return {
            "memory_used_gib": _gib(total - free),
            "memory_free_gib": _gib(free),
            "allocated_gib": _gib(cuda.memory_allocated(index)),
            "peak_allocated_gib": _gib(cuda.max_memory_allocated(index)),
            "utilization_percent": self._utilization(),
        }

    def _utilization(self) -> int | None:
        if not self._nvml_ok:
            return None
        try:
            return int(torch.cuda.utilization(self.index))
        except Exception as exc:  # no NVML (nvidia-ml-py), no driver access: no figure, not an error
            self._nvml_ok = False
            self.note = f"GPU utilisation unavailable: {type(exc).__name__}: {exc}"
            return None

    def _record(self) -> dict | None:
        try:
            current = self.sample()
        except Exception as exc:  # monitoring must never break training
            if not self._sample_failed:
                self._sample_failed = True
                log.debug("device sample failed (further failures not logged): %r", exc)
            return None
        util_key = "utilization_percent" if self.kind == "cuda" else "process_cpu_percent"
        with self._lock:
            self._latest = current
            self._count += 1
            if self._started_at is None:
                self._started_at = current["time"]
            util = current.get(util_key)
            if util is not None:
                self._util_sum += util
                self._util_n += 1
                self._util_peak = util if self._util_peak is None else max(self._util_peak, util)
            for key in ("rss_gib", "peak_rss_gib", "memory_used_gib", "allocated_gib", "peak_allocated_gib"):
                if current.get(key) is not None:
                    self._peaks[key] = max(self._peaks.get(key, 0.0), current[key])
        return current

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._record()
            self._stop.wait(self.interval_s)

    # -- public -----------------------------------------------------------------------------------
    def start(self) -> DeviceMonitor:
        """Start sampling (a first sample at once); a second call while running does nothing."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="device-monitor", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> dict:
        """Stop sampling, take a last sample (the end's peaks) and return ``summary()``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)  # a sample is quick; the wait wakes up at once on stop
            self._thread = None
        self._record()
        return self.summary()

    def __enter__(self) -> DeviceMonitor:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def snapshot(self) -> dict:
        """The latest sample (a copy), taken now if there is none yet; ``{}`` if sampling fails."""
        with self._lock:
            latest = self._latest
        if latest is None:
            latest = self._record()
        return dict(latest) if latest is not None else {}

    def summary(self) -> dict:
        """Over the window: samples, peak/mean utilisation (GPU %, or process CPU % on CPU), peak memory.

        Keys: ``samples``, ``interval_s``, ``window_s``, ``kind``, ``name``, ``host``, ``pid``,
        ``cuda_visible_devices``, ``memory_total_gib``, ``peak_rss_gib``, ``note``; CUDA adds ``index``,
        ``peak_utilization_percent``, ``mean_utilization_percent``, ``peak_memory_used_gib``,
        ``peak_allocated_gib``; CPU adds ``logical_cores``, ``peak_process_cpu_percent``,
        ``mean_process_cpu_percent``. Figures not measured are ``None``.
        """
        util = "utilization_percent" if self.kind == "cuda" else "process_cpu_percent"
        with self._lock:
            latest, peaks = self._latest, dict(self._peaks)
            out = {
                "samples": self._count,
                "interval_s": self.interval_s,
                "window_s": round(latest["time"] - self._started_at, 3) if latest else 0.0,
                "kind": self.kind,
                **self._static,
                f"peak_{util}": self._util_peak,
                f"mean_{util}": round(self._util_sum / self._util_n, 1) if self._util_n else None,
            }
        out["peak_rss_gib"] = peaks.get("peak_rss_gib")
        if self.kind == "cuda":
            out.update(
                peak_memory_used_gib=peaks.get("memory_used_gib"), peak_allocated_gib=peaks.get("peak_allocated_gib")
            )
        out["note"] = self.note
        return out
