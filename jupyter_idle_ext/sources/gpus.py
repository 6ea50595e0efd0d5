"""GPU utilisation of this server's processes through NVML (``nvidia-ml-py``), for the process
source (processes.py), when a driver is there."""

from __future__ import annotations

import contextlib
from typing import Any


class Gpus:
    """GPU utilisation per process through NVML (``nvidia-ml-py``), when a driver is there.

    Utilisation, not memory: an idle kernel that imported torch holds GPU memory and does nothing.
    """

    def __init__(self, nvml: Any, log: Any) -> None:
        self.nvml = nvml
        self.log = log
        self.handles: list[Any] = []
        self._last_seen: dict[int, int] = {}
        if nvml is None:
            self.log.info("GPU activity is off: nvidia-ml-py is not installed.")
            return
        try:
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
            self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as e:
            self.log.info("GPU activity is off: NVML is not available (%s).", e)
            self.handles = []
            return
        self.log.info("Counting GPU utilisation of this server's processes on %d GPU(s).", count)

    def utilisation(self) -> dict[int, float]:
        """The highest SM utilisation (percent) of each process seen since the last call."""
        used: dict[int, float] = {}
        for index, handle in enumerate(self.handles):
            last = self._last_seen.get(index, 0)
            try:
                samples = self.nvml.nvmlDeviceGetProcessUtilization(handle, last)
            except self.nvml.NVMLError_NotFound:
                continue  # no samples since ``last``: nothing ran
            except self.nvml.NVMLError as e:
                self.log.debug("Could not read GPU %d's utilisation: %s", index, e)
                continue
            for sample in samples:
                used[sample.pid] = max(used.get(sample.pid, 0.0), float(sample.smUtil))
                self._last_seen[index] = max(self._last_seen.get(index, 0), sample.timeStamp)
        return used

    def close(self) -> None:
        if self.handles:
            with contextlib.suppress(Exception):
                self.nvml.nvmlShutdown()
            self.handles = []


def load_nvml() -> Any:
    """The NVML bindings (``pip install jupyter-idle-ext[gpu]``), or None."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml
