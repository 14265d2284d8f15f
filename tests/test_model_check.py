"""The llama.cpp build fits this machine, and a model that crashes gives an error instead of a dead Cove.

- `cove.cpu` chooses build flags from what the CPU *and the OS* offer (the Intel Xeon whose OS grants
  no AMX, the AVX2-only AMD EPYC), and the installed `libggml-cpu` holds no instruction this machine
  cannot run (read with objdump).
- The model self-check (`cove.model_check`): a child process that faults or hangs at the first token
  (tests/fixtures/llama_fault: a real SIGSEGV inside llama_decode, as a miscompiled library does)
  becomes a clear `ModelCrashed` error; `cove serve`, `cove mcp` and `cove ask` stay up and say what
  failed and which command fixes it; the result is remembered per model and build.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import FIXTURES, ROOT
from servers import CoveApiServer

from cove import cpu, model_check, model_format
from cove.llm import LlamaCppModel, ModelCrashed, llama_kwargs, resolve_model_path
from cove.model_check import FIX_COMMAND, CheckFailed, ModelChecker
from cove.settings import BUNDLED_CHAT_MODEL, load_settings

FAULT = FIXTURES / "llama_fault"
HEADS = "How many parallel attention heads does the base Transformer use?"

# /proc/cpuinfo flags of the two machines this project runs on (the vector and matrix ones).
EPYC_FLAGS = frozenset("sse4_1 sse4_2 avx avx2 fma f16c bmi1 bmi2 xsave".split())
XEON_FLAGS = EPYC_FLAGS | frozenset(
    "avx512f avx512cd avx512vl avx512dq avx512bw avx512vbmi avx512_vnni avx512_bf16 avx_vnni "
    "amx_tile amx_int8 amx_bf16".split()
)
AVX_STATE = 0x207  # x87, SSE, AVX, PKRU: what the EPYC's kernel enables
AVX512_STATE = AVX_STATE | cpu.XSTATE_AVX512  # the Xeon's kernel: AVX-512 yes, AMX tiles no
AMX_STATE = AVX512_STATE | cpu.XSTATE_AMX


def machine(flags, xstate, amx_granted=False) -> cpu.Machine:
    return cpu.Machine(model="test", flags=frozenset(flags), xstate=xstate, amx_granted=amx_granted)


def test_epyc_gets_avx2_and_never_avx512():
    build = cpu.choose_build(machine(EPYC_FLAGS, AVX_STATE))
    assert set(build.enabled()) == {"GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2"}
    assert "-DGGML_NATIVE=OFF" in build.cmake_args() and "-DGGML_AVX512=OFF" in build.cmake_args()
    assert build.refused == {}


def test_xeon_whose_os_refuses_amx_gets_avx512_without_amx():
    build = cpu.choose_build(machine(XEON_FLAGS, AVX512_STATE, amx_granted=False))
    assert {"GGML_AVX512", "GGML_AVX512_VNNI", "GGML_AVX512_BF16", "GGML_AVX_VNNI"} <= set(build.enabled())
    assert not any(name.startswith("GGML_AMX") for name in build.enabled())
    assert set(build.refused) == {"GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16"}
    assert "-DGGML_AMX_TILE=OFF" in build.cmake_args()
    # Tile state in XCR0 is not enough: the kernel must also grant the permission.
    assert "GGML_AMX_TILE" in cpu.choose_build(machine(XEON_FLAGS, AMX_STATE, amx_granted=False)).refused


def test_amx_stays_off_where_everything_grants_it():
    """The Xeon this suite ran on grants AMX state and permission, and its tiles run (the probe),
    yet llama.cpp 0.3.36's AMX kernels died with SIGILL at `tilezero` at the first token: AMX is
    never chosen, with the reason, and AVX-512 VNNI/BF16 still are."""
    granted = cpu.choose_build(machine(XEON_FLAGS, AMX_STATE, amx_granted=True))
    assert not any(name.startswith("GGML_AMX") for name in granted.enabled())
    assert all("PR 26954" in granted.refused[name] for name in ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16"))
    assert {"GGML_AVX512", "GGML_AVX512_VNNI", "GGML_AVX512_BF16"} <= set(granted.enabled())


def test_a_family_whose_probe_faults_is_left_off():
    """Flags and OS state can both say yes where a hypervisor faults: the probe decides."""
    faulting = machine(XEON_FLAGS, AVX512_STATE)
    faulting.probed = {"avx512": False, "avx512_vnni": True, "avx2": True}
    build = cpu.choose_build(faulting)
    assert "GGML_AVX512" not in build.enabled() and "GGML_AVX2" in build.enabled()
    assert "instructions fault here (probe avx512)" in build.refused["GGML_AVX512"]


def test_probes_run_real_instructions_in_a_child():
    """On this machine: the fault probe (ud2) dies and every family the flags and OS allow runs (a
    probe that faults where the build is enabled would have crashed the model tests too)."""
    assert cpu.run_probe("fault") is False
    here = cpu.read_machine()
    assert here.probed, "no probe ran on this x86-64 Linux machine"
    assert here.probed.get("avx2") is True
    if "avx512f" in here.flags and here.os_grants(cpu.XSTATE_AVX512):
        assert here.probed.get("avx512") is True


def test_os_without_avx512_state_and_unknown_state_stay_safe():
    no_zmm = cpu.choose_build(machine(XEON_FLAGS, AVX_STATE))
    assert "GGML_AVX2" in no_zmm.enabled() and not any("AVX512" in n or "AMX" in n for n in no_zmm.enabled())
    unknown = cpu.choose_build(machine(XEON_FLAGS, None))
    assert unknown.enabled() == ["GGML_SSE42", "GGML_BMI2"]  # nothing that needs OS-saved vector state


def test_portable_profile_is_the_avx2_set_on_any_cpu():
    portable = cpu.choose_build(machine(XEON_FLAGS, AMX_STATE, amx_granted=True), "portable")
    assert set(portable.enabled()) == set(cpu.PORTABLE)
    with pytest.raises(ValueError):
        cpu.choose_build(machine(EPYC_FLAGS, AVX_STATE), "native")


def test_other_architectures_keep_llama_cpp_defaults():
    arm = cpu.Machine(model="arm", flags=frozenset({"asimd", "sve"}), xstate=None, amx_granted=False, x86_64=False)
    assert cpu.choose_build(arm).cmake_args() == ""


def test_build_key_changes_with_the_flags():
    a = cpu.build_key("-DGGML_NATIVE=OFF -DGGML_AVX2=ON", "0.3.36")
    assert a == cpu.build_key("-DGGML_AVX2=ON -DGGML_NATIVE=OFF", "0.3.36")  # order does not matter
    assert a != cpu.build_key("-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=ON", "0.3.36")
    assert a != cpu.build_key("-DGGML_NATIVE=OFF -DGGML_AVX2=ON", "0.3.35")


def test_this_machine_is_read_from_cpu_and_kernel():
    here = cpu.read_machine()
    listed = Path("/proc/cpuinfo").read_text()
    assert ("avx2" in here.flags) == (" avx2" in listed)
    assert here.xstate is not None and here.xstate & cpu.XSTATE_AVX  # every machine here has AVX state
    if "xsave" in here.flags:  # both ways of reading the OS state agree
        assert cpu._xgetbv0() & 0xFF == here.xstate & 0xFF
    build = cpu.choose_build(here)
    if "amx_tile" not in here.flags or not here.amx_granted:
        assert not build.options.get("GGML_AMX_TILE")
    if "avx512f" not in here.flags:
        assert not build.options.get("GGML_AVX512")


def installed_cpu_library() -> Path:
    spec = importlib.util.find_spec("llama_cpp")
    libraries = sorted(Path(next(iter(spec.submodule_search_locations))).glob("lib/libggml-cpu*.so"))
    assert libraries, "llama_cpp has no libggml-cpu: built with the CPU backend as scripts/install.sh does?"
    return libraries[0]


def test_installed_build_enables_only_what_this_machine_runs():
    recorded = Path(sys.prefix) / "cove-llama-cmake-args.txt"
    assert recorded.exists(), "llama-cpp-python was not installed by scripts/install.sh (no flag record in the venv)"
    flags = dict(arg[2:].split("=", 1) for arg in recorded.read_text().split() if arg.startswith("-D"))
    chosen = cpu.choose_build(cpu.read_machine())
    if chosen.options:  # x86-64: never native, and nothing on that this machine's CPU and OS do not offer
        assert flags.get("GGML_NATIVE") == "OFF"
        enabled = {name for name, value in flags.items() if name in chosen.options and value == "ON"}
        assert enabled <= set(chosen.enabled()), enabled - set(chosen.enabled())


AMX_MNEMONICS = re.compile(r"\b(ldtilecfg|sttilecfg|tileloadd|tileloaddt1|tilestored|tilezero|tilerelease|tdp\w+)\b")
ZMM = re.compile(r"%zmm\d|%k[1-7]\b")


def disassemble(path: Path) -> str:
    if shutil.which("objdump") is None:
        pytest.fail("objdump (binutils) is missing: it comes with gcc, which the llama.cpp build needs anyway")
    return subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(path)], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip


def test_the_disassembly_check_finds_amx_and_avx512_code(tmp_path):
    """What the next test looks for is what gcc emits for AMX and AVX-512 (compiled, not run)."""
    source = tmp_path / "kernels.c"
    source.write_text(
        "#include <immintrin.h>\n"
        "void f(void *cfg, void *p, float *out, float *a) {\n"
        "  _tile_loadconfig(cfg); _tile_loadd(0, p, 64); _tile_dpbssd(0, 1, 2); _tile_release();\n"
        "  __m512 x = _mm512_loadu_ps(a); _mm512_storeu_ps(out, _mm512_add_ps(x, x));\n}\n"
    )
    subprocess.run(["gcc", "-O2", "-mamx-tile", "-mamx-int8", "-mavx512f", "-c", str(source), "-o",
                    str(tmp_path / "kernels.o")], check=True)  # fmt: skip
    code = disassemble(tmp_path / "kernels.o")
    assert {"ldtilecfg", "tileloadd", "tdpbssd", "tilerelease"} <= set(AMX_MNEMONICS.findall(code))
    assert ZMM.search(code)


@pytest.mark.slow
def test_installed_libggml_cpu_has_no_instruction_this_machine_cannot_run():
    here = cpu.read_machine()
    library = installed_cpu_library()
    disassembly = disassemble(library)
    assert len(disassembly) > 100_000  # really disassembled
    assert re.search(r"%ymm\d", disassembly)  # the AVX2 kernels are there (this check would see them)
    amx = AMX_MNEMONICS.findall(disassembly)
    assert not amx, f"{library.name} holds AMX instructions {sorted(set(amx))[:5]}: llama.cpp's AMX kernels crash"
    zmm = ZMM.findall(disassembly)
    if not (here.os_grants(cpu.XSTATE_AVX512) and "avx512f" in here.flags):
        assert not zmm, f"{library.name} uses AVX-512 registers {sorted(set(zmm))[:5]} this machine cannot run"


# --- the self-check -------------------------------------------------------------------------------------


@pytest.fixture
def faulty_llama(monkeypatch):
    """Child processes of this test get a llama.cpp whose first decode faults (`mode`: segv, ill, hang)."""

    def use(mode: str = "segv") -> dict[str, str]:
        env = {"PYTHONPATH": os.pathsep.join([str(FAULT), str(ROOT)]), "COVE_TEST_LLAMA_FAULT": mode}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return env

    return use


def bundled() -> tuple[str, dict]:
    settings = load_settings().model
    return resolve_model_path(BUNDLED_CHAT_MODEL), llama_kwargs(settings)


@pytest.mark.slow
def test_crash_at_the_first_token_is_a_clear_error_and_is_remembered(faulty_llama, tmp_path):
    path, kwargs = bundled()
    faulty_llama("segv")
    checker = ModelChecker(tmp_path / "models", timeout_s=120)
    with pytest.raises(CheckFailed) as failed:
        checker.ensure(path, kwargs)
    message = str(failed.value)
    assert "SIGSEGV" in message and "SmolLM2-135M-Instruct.Q4_1.gguf" in message
    assert FIX_COMMAND in message and "COVE_LLAMA_CPU=portable" in message
    assert cpu.read_machine().model in message and "OS grants" in message  # which machine, what it grants
    assert "built with -DGGML_NATIVE=OFF" in message  # the build's flags
    records = list((tmp_path / "models" / "checks").glob("*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["ok"] is False
    # Remembered: a new checker on the same folder fails at once, without running a child.
    os.environ.pop("PYTHONPATH")
    with pytest.raises(CheckFailed, match="SIGSEGV"):
        ModelChecker(tmp_path / "models", timeout_s=120).ensure(path, kwargs)
    # The same model with other run settings is another check (it passes: the fault hook is gone).
    assert ModelChecker(tmp_path / "models", timeout_s=120).ensure(path, {**kwargs, "n_batch": 64}).ok


@pytest.mark.slow
def test_illegal_instruction_and_hang_are_reported(faulty_llama, tmp_path):
    path, kwargs = bundled()
    faulty_llama("ill")
    with pytest.raises(CheckFailed, match=r"SIGILL \(an instruction this CPU does not have\)"):
        ModelChecker(tmp_path / "a", timeout_s=120).ensure(path, kwargs)
    assert len(list((tmp_path / "a" / "checks").glob("*.json"))) == 1  # a fault is written down
    faulty_llama("hang")
    checker = ModelChecker(tmp_path / "b", timeout_s=15)
    with pytest.raises(CheckFailed, match="did not generate 4 tokens within 15 s"):
        checker.ensure(path, kwargs)
    started = time.monotonic()
    with pytest.raises(CheckFailed, match="within 15 s"):  # this process does not wait again...
        checker.ensure(path, kwargs)
    assert time.monotonic() - started < 5
    # ...but a time-out may be a busy machine: it is not written down, the next process checks again.
    assert not list((tmp_path / "b" / "checks").glob("*.json"))
    faulty_llama("term")  # an interrupt (Ctrl-C, systemd stopping the group) is no verdict on the build
    with pytest.raises(CheckFailed, match="SIGTERM"):
        ModelChecker(tmp_path / "c", timeout_s=120).ensure(path, kwargs)
    assert not list((tmp_path / "c" / "checks").glob("*.json"))


def test_check_key_names_the_model_the_build_the_machine_and_the_settings(monkeypatch, tmp_path):
    path, kwargs = bundled()
    key = model_check.check_key(path, kwargs)
    assert key == model_check.check_key(path, dict(kwargs))
    assert key != model_check.check_key(path, {**kwargs, "n_threads": 1})
    copy = tmp_path / "copy.gguf"
    shutil.copy(path, copy)
    assert key != model_check.check_key(str(copy), kwargs)
    other_host = {**model_check.machine_identity(), "flags": ["avx2"], "xstate": 0x207}
    monkeypatch.setattr(model_check, "machine_identity", lambda: other_host)
    assert key != model_check.check_key(path, kwargs)  # a home shared with another host checks again


def test_a_copy_that_cannot_be_made_runs_the_file_as_stored(tmp_path):
    blocked = tmp_path / "models"
    blocked.write_text("a file where the folder should be")
    path, _ = bundled()
    assert ModelChecker(blocked, timeout_s=60).prepare(path, 1024) == path


@pytest.mark.slow
def test_healthy_model_is_converted_and_checked_once(faulty_llama, tmp_path):
    settings = load_settings({"home": str(tmp_path)}).model
    model = LlamaCppModel(settings, tmp_path / "models")
    model.check()
    # The bundled Q4_1 file runs as a Q8_0 copy (llama.cpp's fast x86 kernels), made once.
    assert model_format.gguf_file_type(model.source_path) == 3 and model.path.endswith(".q8_0.gguf")
    assert model_format.gguf_file_type(model.path) == model_format.TARGET_FTYPE
    assert Path(model.path).parent == tmp_path / "models" and "run as Q8_0" in model.name
    record = json.loads(next((tmp_path / "models" / "checks").glob("*.json")).read_text())
    assert record["ok"] and record["prefill_tokens_per_s"] > 0 and record["decode_tokens_per_s"] > 0
    reply = model.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=8)
    assert reply.decode_tokens >= 1 and reply.prefill_seconds > 0 and reply.text.strip()
    faulty_llama("segv")  # a check run now would crash: the remembered result is used instead
    LlamaCppModel(settings, tmp_path / "models").check()  # no ModelCrashed: no child ran
    with pytest.raises(ModelCrashed, match="SIGSEGV"):  # while a new model file is checked, and fails
        other = tmp_path / "copy.gguf"
        shutil.copy(resolve_model_path(BUNDLED_CHAT_MODEL), other)
        LlamaCppModel(settings.model_copy(update={"model": str(other)}), tmp_path / "models").check()
    never = LlamaCppModel(settings.model_copy(update={"convert": "never", "self_check": False}), tmp_path / "x")
    never.check()
    assert never.path == never.source_path  # as stored


def test_gguf_header_reader(tmp_path):
    assert model_format.gguf_file_type(resolve_model_path(BUNDLED_CHAT_MODEL)) == 3  # Q4_1, as shipped
    (tmp_path / "notes.gguf").write_text("not a model")
    with pytest.raises(model_format.NotGGUF):
        model_format.gguf_file_type(tmp_path / "notes.gguf")
    head = Path(resolve_model_path(BUNDLED_CHAT_MODEL)).read_bytes()[:60]
    (tmp_path / "cut.gguf").write_bytes(head)
    with pytest.raises(model_format.NotGGUF):
        model_format.gguf_file_type(tmp_path / "cut.gguf")
    assert model_format.needs_conversion(tmp_path / "notes.gguf", 1024) is None  # llama.cpp reports it
    hostile = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 62)  # a key "of 4 EiB"
    (tmp_path / "hostile.gguf").write_bytes(hostile)
    with pytest.raises(model_format.NotGGUF, match="GGUF key of"):
        model_format.gguf_file_type(tmp_path / "hostile.gguf")


@pytest.fixture
def library_copy(small_library, tmp_path):
    """A copy of the small library: a failed check is remembered in its home, not the shared one."""
    home = tmp_path / "home"
    shutil.copytree(small_library.home_dir, home, ignore=shutil.ignore_patterns("models"))
    return home


@pytest.mark.slow
def test_cove_serve_stays_up_when_the_model_crashes(library_copy, tmp_path, faulty_llama):
    env = faulty_llama("segv")
    env["PYTHONPATH"] = str(FAULT)  # CoveApiServer puts the repo first
    with CoveApiServer(library_copy, env=env, log=tmp_path / "serve.log") as server:
        for _ in range(2):  # the second answer recalls the failed check
            got = httpx.post(
                f"{server.url}/v1/chat/completions",
                json={"model": "cove-baseline", "messages": [{"role": "user", "content": HEADS}]},
                timeout=300,
            )
            assert got.status_code == 503, got.text
            error = got.json()["error"]
            assert error["code"] == "model_unavailable" and "SIGSEGV" in error["message"]
            assert FIX_COMMAND in error["message"]
        assert server.proc.poll() is None  # still serving
        assert httpx.get(f"{server.url}/v1/models", timeout=30).status_code == 200
        search = httpx.post(f"{server.url}/api/search", json={"query": "attention heads", "k": 2}, timeout=120)
        assert search.status_code == 200 and search.json()["hits"]  # what needs no model still works
    assert list((library_copy / "models" / "checks").glob("*.json"))


@pytest.mark.slow
def test_cove_ask_exits_with_the_error_not_a_signal(library_copy, faulty_llama):
    env = {**os.environ, **faulty_llama("segv"), "COVE_HOME": str(library_copy), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "app.cli", "ask", "--pipeline", "baseline", HEADS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    said = " ".join((run.stdout + run.stderr).split())
    assert run.returncode == 3, (run.returncode, said[-2000:])  # 139 / -11 would be the crash itself
    assert "Model error" in said and "SIGSEGV" in said and FIX_COMMAND in said


@pytest.mark.slow
def test_cove_mcp_answers_with_a_tool_error(library_copy, faulty_llama):
    import anyio
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    env = {**faulty_llama("segv"), "COVE_HOME": str(library_copy), "HF_HUB_OFFLINE": "1"}
    params = StdioServerParameters(command=sys.executable, args=["-m", "app.cli", "mcp"], cwd=str(ROOT), env=env)

    async def session():
        async with Client(params, read_timeout_seconds=600) as client:
            first = await client.call_tool("ask_papers", {"question": HEADS, "pipeline": "baseline"})
            papers = await client.call_tool("list_papers", {})
            return first, papers

    first, papers = anyio.run(session)
    assert first.is_error and "SIGSEGV" in first.content[0].text and FIX_COMMAND in first.content[0].text
    assert not papers.is_error  # the server went on serving after the failed answer


@pytest.mark.slow
def test_chat_app_shows_the_error_and_goes_on(library_copy, faulty_llama, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    faulty_llama("segv")
    monkeypatch.setenv("COVE_HOME", str(library_copy))
    st.cache_resource.clear()  # the service is built from these settings
    at = AppTest.from_file(str(ROOT / "app" / "streamlit_app.py"), default_timeout=600)
    at.run()
    for turn in range(2):  # the app is still there for the next question, which recalls the check
        at.chat_input(key="question").set_value(HEADS).run()
        assert not at.exception, at.exception
        assert len(at.error) == turn + 1
        assert "SIGSEGV" in at.error[turn].value and FIX_COMMAND in at.error[turn].value
    st.cache_resource.clear()


@pytest.mark.slow
def test_cove_model_check_reports_the_machine_and_the_verdict(tmp_path, faulty_llama):
    def run(home: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "app.cli", "model-check", "--json", *extra]
        env = {**os.environ, **env, "COVE_HOME": str(home)}
        return subprocess.run(command, cwd=ROOT, timeout=600, env=env, capture_output=True, text=True)

    healthy = run(tmp_path / "a", {})
    report = json.loads(healthy.stdout)
    assert healthy.returncode == 0 and report["ok"] and report["model"].endswith(".q8_0.gguf")
    assert report["build"]["cmake_args"].startswith("-DGGML_NATIVE=OFF") and report["machine"]["cpu"]
    crashing = run(tmp_path / "b", faulty_llama("segv"))
    report = json.loads(crashing.stdout)
    assert crashing.returncode == 3 and not report["ok"] and "SIGSEGV" in report["error"]
    fixed = {"PYTHONPATH": str(ROOT), "COVE_TEST_LLAMA_FAULT": ""}  # the build "fixed" by hand
    assert run(tmp_path / "b", fixed).returncode == 3  # the crash is remembered...
    assert run(tmp_path / "b", fixed, "--recheck").returncode == 0  # ...until --recheck forgets it
