"""A stand-in for an AVX2-only CPU without bf16, for timing the suite on a machine that has bf16.

Put this folder first on PYTHONPATH (every Python process, test subprocesses included, then imports it):
``agnews_lora.devices.cpu_has_fast_bf16()`` answers False, so precision ``auto`` is fp32; together with
``ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2`` torch runs AVX2 kernels:

    PYTHONPATH=benchmarks/avx2_standin ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        ONEDNN_MAX_CPU_ISA=AVX2 python -m pytest

Not a faithful AVX2 machine: OpenVINO picks its kernels from its own CPU detection, and under the
oneDNN cap its int8 export finds no kernel (README, Development).
"""

import importlib.abc
import importlib.util
import sys


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "agnews_lora.devices":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        orig = spec.loader.exec_module

        def exec_module(module):
            orig(module)
            module.cpu_has_fast_bf16.__wrapped__.__code__ = (lambda: False).__code__
            module.cpu_has_fast_bf16.cache_clear()

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Hook())
