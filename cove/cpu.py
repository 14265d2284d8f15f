"""What this x86-64 machine can run, and the llama.cpp build flags that follow from it.

A CPU's feature flags are not enough: AVX, AVX-512 and AMX keep extra register state that the OS
must save and restore, and code using a state the OS has not enabled faults. An Intel Xeon can list
``amx_tile`` in /proc/cpuinfo while its kernel (or hypervisor) grants no AMX state: a native llama.cpp
build then dies with a general protection fault at the first token (``ldtilecfg``). So a feature
counts only when the CPU has it, the OS grants its state, *and* its instructions run:

- CPU flags: /proc/cpuinfo;
- OS state: the XSAVE features the kernel lets user space use (``arch_prctl(ARCH_GET_XCOMP_SUPP)``,
  else XCR0 read with ``xgetbv``), and for AMX a granted permission (``ARCH_REQ_XCOMP_PERM``), which
  the kernel refuses where it does not manage tile data;
- a probe: a few instructions of each family, run from an executable page in a child process. Flags
  and OS state can both say yes where a hypervisor faults anyway: on an Intel Xeon VM measured here,
  XCR0, ``ARCH_GET_XCOMP_SUPP`` and the AMX permission all granted tile state, and ``ldtilecfg``
  still raised SIGILL (SIGSEGV with the permission). Only running the instruction tells.

`scripts/install.sh` runs this file with the system Python (standard library only, before Cove is
installed) to choose ``CMAKE_ARGS`` and the wheel cache key; the model self-check (`cove.model_check`)
uses it to say which features a crashed build met.

    python cove/cpu.py cmake-args     # -DGGML_NATIVE=OFF -DGGML_AVX=ON ...
    python cove/cpu.py key 0.3.36     # the wheel cache key for this flag set
    python cove/cpu.py report         # JSON: CPU, flags, OS state, chosen build
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import mmap
import os
import platform
import sys
from dataclasses import asdict, dataclass, field

# XSAVE state components (bits of XCR0) that each instruction family needs the OS to manage.
XSTATE_AVX = 1 << 2  # upper halves of the YMM registers
XSTATE_AVX512 = (1 << 5) | (1 << 6) | (1 << 7)  # opmask, ZMM_Hi256, Hi16_ZMM
XSTATE_AMX = (1 << 17) | (1 << 18)  # XTILECFG, XTILEDATA
XFEATURE_XTILEDATA = 18

SYS_ARCH_PRCTL = 158  # x86-64 syscall number
ARCH_GET_XCOMP_SUPP = 0x1021
ARCH_REQ_XCOMP_PERM = 0x1023

# The five AVX-512 subsets llama.cpp's GGML_AVX512 compiles for (-mavx512f/cd/vl/dq/bw).
AVX512_BASE = ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")
AMX_FLAGS = ("amx_tile", "amx_int8", "amx_bf16")

# The llama.cpp options a build decides, with the CPU flags each needs and the OS state it uses.
GGML_OPTIONS: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("GGML_SSE42", ("sse4_2",), 0),  # SSE state: always on in x86-64 (the ABI needs it)
    ("GGML_AVX", ("avx",), XSTATE_AVX),
    ("GGML_AVX2", ("avx2",), XSTATE_AVX),
    ("GGML_FMA", ("fma",), XSTATE_AVX),
    ("GGML_F16C", ("f16c",), XSTATE_AVX),
    ("GGML_BMI2", ("bmi2",), 0),
    ("GGML_AVX_VNNI", ("avx_vnni",), XSTATE_AVX),
    ("GGML_AVX512", AVX512_BASE, XSTATE_AVX512),
    ("GGML_AVX512_VBMI", (*AVX512_BASE, "avx512vbmi"), XSTATE_AVX512),
    ("GGML_AVX512_VNNI", (*AVX512_BASE, "avx512_vnni"), XSTATE_AVX512),
    ("GGML_AVX512_BF16", (*AVX512_BASE, "avx512_bf16"), XSTATE_AVX512),
    ("GGML_AMX_TILE", (*AVX512_BASE, "amx_tile"), XSTATE_AMX | XSTATE_AVX512),
    ("GGML_AMX_INT8", (*AVX512_BASE, "amx_tile", "amx_int8"), XSTATE_AMX | XSTATE_AVX512),
    ("GGML_AMX_BF16", (*AVX512_BASE, "amx_tile", "amx_bf16"), XSTATE_AMX | XSTATE_AVX512),
)
# The probe of each option: machine code that uses the family's instructions and returns (x86-64
# System V ABI; `vzeroupper` leaves no dirty upper state behind). The AMX probes configure three
# 16x64-byte tiles from the buffer in rdi, multiply them and release the tiles, as llama.cpp's AMX
# kernels do. Assembled with GNU as from the Intel-syntax lines in the comments.
PROBES: dict[str, str] = {
    "avx2": "c5fdfec0c5f877c3",  # vpaddd ymm0,ymm0,ymm0; vzeroupper; ret
    "fma": "c4e27db8c0c5f877c3",  # vfmadd231ps ymm0,ymm0,ymm0
    "f16c": "c4e27d13c0c5f877c3",  # vcvtph2ps ymm0,xmm0
    "bmi2": "c4e2fbf5c0c3",  # pdep rax,rax,rax
    "avx_vnni": "c4e27d50c0c5f877c3",  # {vex} vpdpbusd ymm0,ymm0,ymm0
    "avx512": "62f17d48fcc0c5f877c3",  # vpaddb zmm0,zmm0,zmm0
    "avx512_vbmi": "62f27d488dc0c5f877c3",  # vpermb zmm0,zmm0,zmm0
    "avx512_vnni": "62f27d4850c0c5f877c3",  # vpdpbusd zmm0,zmm0,zmm0
    "avx512_bf16": "62f27f4872c0c5f877c3",  # vcvtne2ps2bf16 zmm0,zmm0,zmm0
    # ldtilecfg [rdi]; tilezero tmm0..2; tdpbssd tmm0,tmm1,tmm2; tilerelease; ret
    "amx_int8": "c4e2784907c4e27b49c0c4e27b49c8c4e27b49d0c4e26b5ec1c4e27849c0c3",
    # the same with tdpbf16ps tmm0,tmm1,tmm2
    "amx_bf16": "c4e2784907c4e27b49c0c4e27b49c8c4e27b49d0c4e26a5cc1c4e27849c0c3",
}
OPTION_PROBES = {
    "GGML_AVX": "avx2", "GGML_AVX2": "avx2", "GGML_FMA": "fma", "GGML_F16C": "f16c", "GGML_BMI2": "bmi2",
    "GGML_AVX_VNNI": "avx_vnni", "GGML_AVX512": "avx512", "GGML_AVX512_VBMI": "avx512_vbmi",
    "GGML_AVX512_VNNI": "avx512_vnni", "GGML_AVX512_BF16": "avx512_bf16", "GGML_AMX_TILE": "amx_int8",
    "GGML_AMX_INT8": "amx_int8", "GGML_AMX_BF16": "amx_bf16",
}  # fmt: skip
PROBE_TIMEOUT_S = 10.0
FAULT_PROBE = "0f0bc3"  # ud2; ret: must kill its child, or the probes cannot be trusted here

# Options left off whatever the machine offers, because llama.cpp's own code for them crashes.
# llama-cpp-python 0.3.36's AMX kernels die at their first tile instruction on a Xeon whose AMX
# works (this file's probe runs `ldtilecfg`/`tdpbssd` there): gdb shows SIGILL at `tilezero` in
# `ggml_backend_amx_mul_mat`, in a worker thread. llama.cpp PR 26954 names the causes: the tile
# configuration lives on the stack and the compiler optimises it away, and worker threads never ask
# for the XTILEDATA permission. AVX-512 (VNNI, BF16) serves the same quantised matrix products.
BROKEN_IN_LLAMA = {
    "GGML_AMX_TILE": "llama.cpp's AMX kernels crash at their first tile instruction (llama.cpp PR 26954)",
    "GGML_AMX_INT8": "llama.cpp's AMX kernels crash at their first tile instruction (llama.cpp PR 26954)",
    "GGML_AMX_BF16": "llama.cpp's AMX kernels crash at their first tile instruction (llama.cpp PR 26954)",
}

# "portable": what every x86-64 machine this project meets runs (x86-64-v3 without AVX-512).
PORTABLE = frozenset({"GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2"})


@dataclass
class Machine:
    """What the CPU offers and what the OS grants of it."""

    model: str
    flags: frozenset[str]
    xstate: int | None  # user-space XSAVE features the OS enables; None: could not be read
    amx_granted: bool
    xstate_source: str = ""
    x86_64: bool = True
    probed: dict[str, bool] | None = None  # probe family -> its instructions ran; None: not probed

    def runs(self, option: str) -> bool:
        """Did the option's probe run here (True where it was not probed)?"""
        family = OPTION_PROBES.get(option)
        return self.probed is None or family is None or self.probed.get(family, True)

    def os_grants(self, state: int) -> bool:
        if state == 0:
            return True
        if state & XSTATE_AMX and not self.amx_granted:  # tile data needs the kernel's permission too
            return False
        return self.xstate is not None and self.xstate & state == state


@dataclass
class Build:
    """The llama.cpp CPU options chosen for a machine, and why each wanted one was left off."""

    options: dict[str, bool]
    refused: dict[str, str] = field(default_factory=dict)  # option -> reason (CPU has it, OS does not)
    profile: str = "auto"

    def cmake_args(self) -> str:
        if not self.options:  # not x86-64: llama.cpp's own defaults
            return ""
        # GGML_NATIVE=OFF: -march=native would compile whatever the compiler sees (AMX included),
        # whatever the OS grants. GGML_BACKEND_DL stays off: one library, built for this machine.
        parts = ["-DGGML_NATIVE=OFF"]
        parts += [f"-D{name}={'ON' if on else 'OFF'}" for name, on in self.options.items()]
        return " ".join(parts)

    def enabled(self) -> list[str]:
        return [name for name, on in self.options.items() if on]


def read_machine(cpuinfo: str = "/proc/cpuinfo", probe: bool = True) -> Machine:
    """The running machine: CPU flags from /proc/cpuinfo, OS-enabled state from the kernel, and (with
    `probe`) which instruction families really run."""
    flags: frozenset[str] = frozenset()
    model = platform.processor() or platform.machine()
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features") and not flags:  # x86 / ARM
                    flags = frozenset(value.split())
                elif key.strip() == "model name" and value.strip():
                    model = value.strip()
    except OSError:
        pass
    xstate, source = read_xstate(flags)
    machine = Machine(model=model, flags=flags, xstate=xstate, amx_granted=amx_permission(), xstate_source=source,
                      x86_64=platform.machine() in ("x86_64", "AMD64"))  # fmt: skip
    if machine.x86_64 and sys.platform.startswith("linux") and probe:
        machine.probed = probe_families(machine)
    return machine


def probe_families(machine: Machine) -> dict[str, bool]:
    """{family: its instructions ran} for each family the flags and the OS state allow (a family they
    already rule out is not run: its instructions would only fault)."""
    if run_probe("fault"):  # ud2 returned: a child that survives anything says nothing
        return {}
    wanted = [name for name, needs, state in GGML_OPTIONS
              if all(flag in machine.flags for flag in needs) and machine.os_grants(state)]  # fmt: skip
    families = sorted({OPTION_PROBES[name] for name in wanted if name in OPTION_PROBES})
    return {family: run_probe(family) for family in families}


def run_probe(family: str) -> bool:
    """Run one family's probe in a child process: True when it returned, False when it faulted."""
    import subprocess

    try:
        done = subprocess.run([sys.executable, "-I", os.path.abspath(__file__), "probe", family],
                              capture_output=True, timeout=PROBE_TIMEOUT_S)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _execute_probe(family: str) -> None:
    """In the probe's child: run the family's machine code (a fault kills this process, not Cove)."""
    if family.startswith("amx"):
        amx_permission()  # what llama.cpp asks for before its first tile instruction
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(bytes.fromhex(FAULT_PROBE if family == "fault" else PROBES[family]))
    config = (ctypes.c_uint8 * 128)()  # a 64-byte tile configuration, aligned inside the buffer
    at = ctypes.addressof(config)
    at += -at % 64
    tiles = (ctypes.c_uint8 * 64).from_address(at)
    tiles[0] = 1  # palette 1
    for tile in range(3):
        tiles[16 + 2 * tile] = 64  # 64 bytes per row
        tiles[48 + tile] = 16  # 16 rows
    ctypes.CFUNCTYPE(None, ctypes.c_void_p)(ctypes.addressof(ctypes.c_char.from_buffer(page)))(at)


def _arch_prctl(code: int, argument) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.syscall(SYS_ARCH_PRCTL, ctypes.c_int(code), argument)


def read_xstate(flags: frozenset[str]) -> tuple[int | None, str]:
    """The XSAVE features the OS enables for user space, and where that was read."""
    if platform.machine() not in ("x86_64", "AMD64") or not sys.platform.startswith("linux"):
        return None, "not x86-64 Linux"
    supported = ctypes.c_uint64(0)
    try:
        if _arch_prctl(ARCH_GET_XCOMP_SUPP, ctypes.byref(supported)) == 0:
            return supported.value, "arch_prctl(ARCH_GET_XCOMP_SUPP)"
    except (OSError, AttributeError):
        pass
    # Kernels before 5.16 have no ARCH_GET_XCOMP_SUPP (and no AMX support at all): read XCR0. xgetbv
    # is legal only where the OS turned XSAVE on, which the kernel shows as the "xsave" flag.
    if "xsave" not in flags:
        return None, "no xsave"
    try:
        return _xgetbv0(), "xgetbv"
    except (OSError, ValueError) as err:
        return None, f"xgetbv unavailable: {err}"


# xor ecx, ecx; xgetbv; shl rdx, 32; or rax, rdx; ret  ->  uint64_t xgetbv0(void)
_XGETBV0 = bytes.fromhex("31c90f01d048c1e2204809d0c3")


def _xgetbv0() -> int:
    """XCR0, read by running the xgetbv instruction from an executable page (no compiler needed)."""
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    try:
        page.write(_XGETBV0)
        address = ctypes.addressof(ctypes.c_char.from_buffer(page))
        value = ctypes.CFUNCTYPE(ctypes.c_uint64)(address)()
        del address
        return int(value)
    finally:
        try:
            page.close()
        except BufferError:  # a ctypes view still points into it; the page is freed with the process
            pass


def amx_permission() -> bool:
    """Whether the kernel grants this process AMX tile data (what llama.cpp's AMX path asks for)."""
    if platform.machine() not in ("x86_64", "AMD64") or not sys.platform.startswith("linux"):
        return False
    try:
        return _arch_prctl(ARCH_REQ_XCOMP_PERM, ctypes.c_ulong(XFEATURE_XTILEDATA)) == 0
    except (OSError, AttributeError):
        return False


def usable_cores() -> int:
    """The cores this process may run on (its affinity), not the machine's total."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def choose_build(machine: Machine, profile: str = "auto") -> Build:
    """The options to build llama.cpp with: each where the CPU has its flags and the OS grants its
    state ("auto"), or the portable AVX2 set capped by the same test ("portable")."""
    if profile not in ("auto", "portable"):
        raise ValueError(f"unknown build profile {profile!r}: use 'auto' or 'portable'")
    if not machine.x86_64:  # the x86 flags mean nothing there; llama.cpp chooses (ARM, RISC-V, ...)
        return Build(options={}, profile=profile)
    options: dict[str, bool] = {}
    refused: dict[str, str] = {}
    for name, needs, state in GGML_OPTIONS:
        has_cpu = all(flag in machine.flags for flag in needs)
        wanted = has_cpu and (profile == "auto" or name in PORTABLE)
        granted = machine.os_grants(state)
        runs = machine.runs(name)
        broken = BROKEN_IN_LLAMA.get(name)
        options[name] = wanted and granted and runs and not broken
        if wanted and broken:
            refused[name] = broken
        elif wanted and not granted:
            refused[name] = "the CPU lists it but the OS does not enable its register state"
        elif wanted and not runs:
            refused[name] = f"the CPU lists it and the OS grants its state, but its instructions fault here " \
                            f"(probe {OPTION_PROBES[name]})"
    return Build(options=options, refused=refused, profile=profile)


def build_key(cmake_args: str, package_version: str) -> str:
    """A short name for one build: the package version and the exact CMake arguments (plus the
    compiler's and Python's identity), so a changed flag set never reuses an old wheel."""
    identity = "\n".join([package_version, " ".join(sorted(cmake_args.split())), _compiler(), sys.version])
    if not cmake_args:  # llama.cpp's defaults (not x86-64): a native build, so the CPU is part of its name
        machine = read_machine()
        identity += "\n" + machine.model + " " + " ".join(sorted(machine.flags)) + platform.machine()
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def _compiler() -> str:
    import shutil
    import subprocess

    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or ""
    if not cc:
        return "no compiler"
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=10).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError):
        return cc


def report(machine: Machine | None = None, profile: str = "auto") -> dict:
    machine = machine or read_machine()
    build = choose_build(machine, profile)
    return {
        "cpu": machine.model,
        "cpu_flags": sorted(f for f in machine.flags if f.startswith(("avx", "amx", "fma", "f16c", "bmi", "sse4"))),
        "os_xstate": None if machine.xstate is None else hex(machine.xstate),
        "os_xstate_source": machine.xstate_source,
        "amx_granted": machine.amx_granted,
        "probes": machine.probed,
        "build": asdict(build) | {"cmake_args": build.cmake_args()},
    }


def describe(machine: Machine | None = None) -> str:
    """One line for error messages: the CPU, its vector features, and what the OS grants."""
    machine = machine or read_machine()
    vector = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_tile") if f in machine.flags]
    granted = []
    if machine.os_grants(XSTATE_AVX):
        granted.append("AVX")
    if machine.os_grants(XSTATE_AVX512):
        granted.append("AVX-512")
    if machine.os_grants(XSTATE_AMX):
        granted.append("AMX")
    flags = ", ".join(vector) or "none of avx2/avx512/amx"
    line = f"{machine.model}; CPU flags {flags}; OS grants {', '.join(granted) or 'none'}"
    faulted = sorted(family for family, ran in (machine.probed or {}).items() if not ran)
    return line + (f"; faulted when run: {', '.join(faulted)}" if faulted else "")


def main(argv: list[str]) -> int:
    profile = os.environ.get("COVE_LLAMA_CPU", "auto")
    command = argv[1] if len(argv) > 1 else "report"
    if command == "cmake-args":
        print(choose_build(read_machine(), profile).cmake_args())
    elif command == "key":
        cmake_args = os.environ.get("CMAKE_ARGS") or choose_build(read_machine(), profile).cmake_args()
        print(build_key(cmake_args, argv[2] if len(argv) > 2 else ""))
    elif command == "probe" and len(argv) > 2 and (argv[2] in PROBES or argv[2] == "fault"):
        _execute_probe(argv[2])
    elif command == "report":
        print(json.dumps(report(profile=profile), indent=2))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
