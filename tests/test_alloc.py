"""cim_flow.tune_allocator: glibc's thresholds set in the calling process only when asked,
and left alone when the environment already chooses them or opts out."""
import json
import os
import subprocess
import sys

import pytest

CODE = ("import json, cim_flow, cim_flow._alloc as a; "
        "print(json.dumps([cim_flow.tune_allocator(), a.allocator_settings()]))")


def _run(**env):
    e = {k: v for k, v in os.environ.items()
         if k not in ("CIM_FLOW_TUNE_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")}
    e.update(env)
    out = subprocess.run([sys.executable, "-c", CODE], env=e, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _glibc() -> bool:
    import platform

    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not _glibc(), reason="mallopt is glibc's")
def test_tune_allocator_sets_the_thresholds_on_request():
    assert _run() == [True, [32 << 20, 256 << 20]]


def test_tune_allocator_leaves_a_chosen_or_refused_setting_alone():
    assert _run(CIM_FLOW_TUNE_MALLOC="0") == [False, None]
    assert _run(MALLOC_TRIM_THRESHOLD_="1000000") == [False, None]


def test_importing_the_library_changes_nothing():
    code = "import cim_flow, cim_flow._alloc as a; e = cim_flow.Engine(); print(a.allocator_settings())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "None"
