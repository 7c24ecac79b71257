"""Every numba kernel uses the shared JIT settings (cache=True, nogil, no fastmath=True)."""
import ast
import pathlib

import numba

import kernels

KERNEL_DIR = pathlib.Path(kernels.__file__).parent


def _decorators(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            for d in node.decorator_list:
                yield node.name, ast.unparse(d)


def test_no_bare_numba_decorators():
    offenders = []
    for path in KERNEL_DIR.glob("*.py"):
        if path.name == "_jit.py":
            continue
        src = path.read_text()
        assert "fastmath=True" not in src, path
        for name, deco in _decorators(path):
            if "njit" in deco or "numba.jit" in deco or deco == "jit(nopython=True)":
                offenders.append(f"{path.name}:{name} uses {deco}")
            if deco.split("(")[0] not in ("jit", "pjit"):
                offenders.append(f"{path.name}:{name} has unexpected decorator {deco}")
    assert not offenders, offenders


def test_every_kernel_is_cached_dispatcher():
    import importlib

    seen = 0
    for path in KERNEL_DIR.glob("*.py"):
        if path.name.startswith("__") or path.name == "_jit.py":
            continue
        mod = importlib.import_module(f"kernels.{path.stem}")
        for name, obj in vars(mod).items():
            if isinstance(obj, numba.core.registry.CPUDispatcher) and obj.__module__ == mod.__name__:
                seen += 1
                assert type(obj._cache).__name__ == "FunctionCache", f"{mod.__name__}.{name} is not cache=True"
                assert obj.targetoptions.get("nogil") is True, f"{mod.__name__}.{name} lacks nogil"
                fm = obj.targetoptions.get("fastmath") or set()
                assert fm is not True and "nnan" not in fm and "ninf" not in fm and "fast" not in fm, name
    assert seen >= 5


def _vm_flags(addr):
    """The VmFlags of the mapping holding ``addr`` in this process (Linux), or None."""
    try:
        text = pathlib.Path("/proc/self/smaps").read_text()
    except OSError:
        return None
    inside = False
    for line in text.splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= addr < hi
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    return None


def test_hugepages_marks_big_fresh_arrays_and_keeps_values():
    """hugepages asks the kernel for huge pages behind a kernel's big fresh array (the
    mapping then carries the "hg" flag) and is only a hint: values are unchanged, small
    arrays are left alone."""
    import sys

    import numpy as np

    from kernels._jit import hugepages, jit

    @jit
    def fill(n):
        a = hugepages(np.empty(n, np.int64))
        for i in range(n):
            a[i] = 3 * i
        return a

    big, small = fill(1 << 21), fill(1000)  # 16 MiB and 8 KB
    assert np.array_equal(big, 3 * np.arange(1 << 21)) and np.array_equal(small, 3 * np.arange(1000))
    if sys.platform.startswith("linux"):
        flags = _vm_flags(big.ctypes.data + big.nbytes // 2)
        assert flags is not None and "hg" in flags, flags
