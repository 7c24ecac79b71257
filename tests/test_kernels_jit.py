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
