"""This machine's CPU, read once: usable cores, cache sizes, the vector instructions ONNX
Runtime's int8 kernels use, and from them the encoder's batch size and the split of cores
between the encoder and the threads that read and decode files (`plan`).

Linux files only (/proc/cpuinfo, /sys/devices/system/cpu): elsewhere the cores are known and
the rest is left empty, which gives the same plan as a CPU without those instructions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# The flags (as /proc/cpuinfo names them) that decide which int8 matrix kernel runs:
# avx512_vnni / avx_vnni: VPDPBUSD (u8 x s8, 32-bit sums); avx2 / avx512bw: VPMADDUBSW
# (16-bit pair sums, hence the 7-bit weights); asimddot: ARM SDOT/UDOT; i8mm: ARM SMMLA
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8",
             "asimddot", "i8mm", "sve")
# The encoder's batch: as many images as keep the largest activation of every image in flight
# within the cores' L2 caches. ViT-B-32's MLP hidden layer is 50 x 3072 floats = 0.6 MB per
# image. On an idle 2-core Xeon with 2 MB L2 per core batches of 8 to 64 ran alike (28.2
# images/s fp32), batch 1 28% slower; under load larger batches fell behind (13.4 images/s at 64
# against 23.8 at 8): bench/RESULTS.md, "Encoder alone against indexing end to end"
IMAGE_WORKING_SET_KB = 512
MIN_BATCH, MAX_BATCH = 4, 64
# Reader threads at most: past this, the Python between their GIL-free calls (opening a file,
# building its record) queues on the GIL
MAX_READERS = 16


@dataclass(frozen=True)
class CpuInfo:
    model: str  # "Intel(R) Xeon(R) Processor"; "" when unknown
    cores: int  # CPUs this process may run on (its affinity mask)
    flags: tuple[str, ...]  # those of ISA_FLAGS this CPU has
    l2_kb: int  # per-core L2 (0: unknown)
    l3_kb: int  # the last-level cache, shared (0: unknown)

    @property
    def int8_kernel(self) -> str:
        """Which int8 dot-product ONNX Runtime runs: vnni, avx2, arm-dot or plain."""
        if {"avx512_vnni", "avx_vnni", "amx_int8"} & set(self.flags):
            return "vnni"
        if {"avx2", "avx512bw"} & set(self.flags):
            return "avx2"
        return "arm-dot" if "asimddot" in self.flags else "plain"

    def line(self) -> str:
        """For results headers: model, cores, caches and ISA flags."""
        caches = f"L2 {self.l2_kb} KB/core, L3 {self.l3_kb // 1024} MB" if self.l2_kb else ""
        return (f"{self.model or 'unknown CPU'}, {self.cores} cores, {caches}; ISA: "
                f"{' '.join(self.flags) or 'none of ' + ' '.join(ISA_FLAGS)} "
                f"(int8 kernel: {self.int8_kernel})")


@dataclass(frozen=True)
class Plan:
    """How indexing uses the cores (`plan`)."""

    batch: int  # images per encoder call
    encoder_threads: int  # ONNX Runtime / torch intra-op threads
    reader_threads: int  # threads reading, hashing and decoding files beside the encoder


@cache
def cpu_info() -> CpuInfo:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    fields = _cpuinfo_fields()
    words = set((fields.get("flags") or fields.get("Features") or "").split())
    return CpuInfo(fields.get("model name", ""), cores,
                   tuple(f for f in ISA_FLAGS if f in words), *_cache_kb())


def plan(info: CpuInfo | None = None) -> Plan:
    """A pure function of the CPU, chosen at run time from `cpu_info()`.

    The encoder takes every core (ONNX Runtime intra-op threads, or int8's one single-threaded
    session per core). Its idle threads sleep rather than spin, so the readers (hashing,
    reading, decoding: PIL and hashlib release the GIL) run in the gaps: the cores are shared,
    not split. There are as many readers as cores (at most MAX_READERS), so reading never waits
    for a free reader, only for a core: decoding a 12 MP JPEG even at 1/8 scale costs about as
    much core time as encoding ViT-B-32 with the int8 tower (~30 ms of one core each: 31 ms
    decoding on an EPYC, 63 images/s on 2 Xeon cores; `python -m bench.pipeline` prints both
    for the machine at hand): one reader would cap a 4-core
    machine at half its encoder's rate (`--readers 1` there measures this choice). Readers
    stay at most two chunks ahead of the encoder, so more of them hold no more files.

    The batch: what fits the cores' L2 (IMAGE_WORKING_SET_KB per image), 4 per core when the
    cache sizes are unknown. Batch size and threads never change the vectors (tested)."""
    info = info or cpu_info()
    fits = info.cores * info.l2_kb // IMAGE_WORKING_SET_KB if info.l2_kb else 4 * info.cores
    batch = max(MIN_BATCH, min(MAX_BATCH, fits))
    return Plan(batch, info.cores, max(1, min(MAX_READERS, info.cores)))


def _cpuinfo_fields() -> dict[str, str]:
    """The first processor's `key: value` lines of /proc/cpuinfo ({} where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _cache_kb() -> tuple[int, int]:
    """(L2 per core, largest L3) in KB from sysfs; 0 where unknown."""
    sizes: dict[int, int] = {}
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level = int((entry / "level").read_text())
            size = (entry / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        kb = int(size[:-1]) * (1024 if size.endswith("M") else 1) if size[-1] in "KM" else 0
        sizes[level] = max(sizes.get(level, 0), kb)
    return sizes.get(2, 0), sizes.get(3, 0)
