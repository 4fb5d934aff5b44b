"""The machine a benchmark ran on, recorded in every results file (issue 7: state the machine)."""

from __future__ import annotations

import os
import platform


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(**extra) -> dict:
    """Platform, Python, torch and its thread count, CPU cores and model, the load average now
    (``load_average_before``: other jobs share these cores), and the GPU (name, memory, CUDA
    version; ``gpu`` is None without CUDA). ``extra`` adds or overrides keys."""
    import torch

    gpu = torch.cuda.is_available()
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if gpu else None,
        "cuda": torch.version.cuda if gpu else None,
    }
    info.update(extra)
    return info
