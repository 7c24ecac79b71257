"""The one place where numba options are set.

Every kernel in ``kernels/`` is decorated with :func:`jit` (or :func:`pjit` for
``prange`` kernels).  ``cache=True`` so a restart loads machine code from
``__pycache__`` instead of compiling again; ``nogil=True`` so the NATS service
can run a kernel while its event loop keeps reading the socket.

fastmath: we never use ``fastmath=True``.  Projection kernels use :data:`SAFE_MATH`
(no ``nnan``/``ninf``: NaN masks must keep working).  Spatial kernels use
:data:`EXACT_MATH` (IEEE, no contraction to FMA) because their answers must
be *exactly* the set brute force gives in float64, boundary included.

Also here: the few LLVM intrinsics the kernels use (:func:`load_u64`,
:func:`mul_u128`, :func:`prefetch`) -- machine operations numba does not expose.
"""
import numba
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

SAFE_MATH = frozenset({"nsz", "arcp", "afn"})
EXACT_MATH = frozenset()

_COMMON = dict(cache=True, nogil=True)


def jit(fn=None, *, fastmath=SAFE_MATH, nrt=True, inline=False, llvm_inline=False):
    """Serial kernel with the project's JIT settings.

    ``nrt=False`` compiles without Numba's reference counting.  For kernels
    that allocate nothing and take the state namedtuples (~90 arrays): with
    reference counting every call and branch increfs/decrefs those arrays,
    measured at ~430 ns an event on the 2-core machine; without it, ~2 ns.
    Such a kernel must not create arrays (numba then refuses to compile it).

    ``inline=True`` inlines at Numba-IR level, for per-event helpers that take
    the state tuples: a real call passes every array struct by value
    (~650 scalars), measured at ~150 ns a call.

    ``llvm_inline=True`` sets numba's ``forceinline``: LLVM ``alwaysinline`` on the
    compiled function, so every caller gets it inlined when the module is optimised.
    Numba marks nothing for inlining and LLVM's own heuristics left even 10-line
    helpers as calls that pass every array as a flattened struct.  Cheaper to
    compile than ``inline=True`` (no re-typing of the callee at each call site);
    used for the JSON scanner's per-byte and per-token helpers, the spatial grid's
    column lookup, and every per-event helper of the projection kernel (hashing, probe,
    the count-order swaps, the incident-list links): left as calls, those passed the
    state tuples by value (``asv_benchmarks/tools/apply_costs.py kinds`` times the
    kernel per event kind).  Not for the
    spatial point loops: there it measured 6-19% slower.

    Numba's cache checks only the source file of the cached function: after editing a
    helper in another module (``intern.py``, this file), delete ``kernels/__pycache__``
    before measuring, or callers run their old inlined copy.

    Pass int64 / ``np.bool_`` values, not literals, to helpers called from several
    places: a literal argument (``0``, ``True``) makes numba type and compile a
    separate specialisation of the callee (one such cost 35 s of cold compile).
    """
    opts = dict(_COMMON)
    if llvm_inline:
        opts["forceinline"] = True
    if not nrt:
        opts["_nrt"] = False
    if inline:
        opts["inline"] = "always"
    deco = numba.njit(fastmath=set(fastmath) or False, **opts)
    return deco(fn) if fn is not None else deco


def pjit(fn=None, *, fastmath=EXACT_MATH):
    """Parallel (``prange``) kernel with the project's JIT settings."""
    deco = numba.njit(parallel=True, fastmath=set(fastmath) or False, **_COMMON)
    return deco(fn) if fn is not None else deco


@intrinsic
def load_u64(typingctx, buf, i):
    """The 8 bytes ``buf[i:i+8]`` of a uint8 array as one little-endian uint64, in one
    unaligned load (the caller guarantees ``i + 8 <= buf.shape[0]``).

    A loop of eight byte loads and shifts is not always fused into one load by LLVM; in
    the JSON scanner and the span hash it was the inner loop."""
    if not (isinstance(buf, types.Array) and buf.dtype == types.uint8 and buf.ndim == 1
            and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        arr = context.make_array(sig.args[0])(context, builder, args[0])
        idx = context.cast(builder, args[1], sig.args[1], types.intp)
        ptr = builder.bitcast(builder.gep(arr.data, [idx]), ir.IntType(64).as_pointer())
        return builder.load(ptr, align=1)

    return types.uint64(buf, i), codegen


@intrinsic
def mul_u128(typingctx, a, b):
    """``(hi, lo)`` uint64 halves of the full 128-bit product of two uint64 (one ``mul``
    on x86-64; the portable four-multiply form cost ~3x as much in the number parser)."""
    if not (a == types.uint64 and b == types.uint64):
        return None

    def codegen(context, builder, sig, args):
        i128 = ir.IntType(128)
        p = builder.mul(builder.zext(args[0], i128), builder.zext(args[1], i128))
        lo = builder.trunc(p, ir.IntType(64))
        hi = builder.trunc(builder.lshr(p, ir.Constant(i128, 64)), ir.IntType(64))
        return context.make_tuple(builder, sig.return_type, (hi, lo))

    return types.UniTuple(types.uint64, 2)(a, b), codegen


@intrinsic
def prefetch(typingctx, arr, i):
    """Hint the CPU to fetch the cache line of element ``i`` of a 1-D (or the row ``i`` of a
    C-contiguous 2-D) array; no effect on results.  For hash-table probes issued a few
    events ahead, so their cache misses overlap instead of queueing one after another."""
    if not (isinstance(arr, types.Array) and arr.ndim in (1, 2) and arr.layout == "C"
            and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        aty = sig.args[0]
        ary = context.make_array(aty)(context, builder, args[0])
        idx = context.cast(builder, args[1], sig.args[1], types.intp)
        if aty.ndim == 2:
            idx = builder.mul(idx, builder.extract_value(ary.shape, 1))
        ptr = builder.bitcast(builder.gep(ary.data, [idx]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(), i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])  # read, keep in all levels, data
        return context.get_dummy_value()

    return types.void(arr, i), codegen


# --- transparent huge pages for big fresh arrays ----------------------------------
# An array a kernel creates comes from numba's allocator (malloc: a fresh mmap for big
# sizes) and is faulted in 4 KiB at a time as the kernel first writes it. NumPy asks the
# kernel for transparent huge pages on its own big allocations (madvise(MADV_HUGEPAGE);
# "madvise" is the usual THP setting), numba does not. Measured on the 2-core VM,
# filling a fresh 288 MB array from a parallel kernel took 115 ms when numba allocated
# it and 27 ms when NumPy had (18M page faults' worth of kernel time, 512x fewer faults).

_MADV_HUGEPAGE = 14  # Linux
_HUGE_MIN = 4 << 20  # what NumPy uses: smaller arrays gain nothing
_LINUX = __import__("sys").platform.startswith("linux")


@intrinsic
def _madvise_huge(typingctx, addr, length):
    """``madvise(addr, length, MADV_HUGEPAGE)`` on Linux, nothing elsewhere (the
    symbol is resolved from the C library when the kernel is loaded)."""
    if not (isinstance(addr, types.Integer) and isinstance(length, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        if _LINUX:
            i8p = ir.IntType(8).as_pointer()
            fnty = ir.FunctionType(ir.IntType(32), [i8p, ir.IntType(64), ir.IntType(32)])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "madvise")
            a = context.cast(builder, args[0], sig.args[0], types.int64)
            n = context.cast(builder, args[1], sig.args[1], types.int64)
            builder.call(fn, [builder.inttoptr(a, i8p), n, ir.IntType(32)(_MADV_HUGEPAGE)])
        return context.get_dummy_value()

    return types.void(addr, length), codegen


@intrinsic
def _data_address(typingctx, arr):
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        return builder.ptrtoint(ary.data, ir.IntType(64))

    return types.int64(arr), codegen


@intrinsic
def u8_pointer(typingctx, addr):
    """A ``uint8`` pointer to memory at the integer ``addr``, for ``numba.carray``: how a
    kernel reads an Arrow buffer given its address (``pyarrow.Buffer.address``).  The
    caller keeps the buffer alive and reads only within it."""
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())

    return types.CPointer(types.uint8)(addr), codegen


@intrinsic
def peek_i64(typingctx, addr):
    """The int64 at address ``addr`` (a field of a C struct the caller keeps alive)."""
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        a = context.cast(builder, args[0], sig.args[0], types.int64)
        return builder.load(builder.inttoptr(a, ir.IntType(64).as_pointer()))

    return types.int64(addr), codegen


@intrinsic
def c_release(typingctx, addr):
    """Call the ``release`` callback of the Arrow C data interface struct at ``addr``
    (``struct ArrowArray``: the pointer at byte 64), when set (a released struct has NULL
    there)."""
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        i8p = ir.IntType(8).as_pointer()
        a = context.cast(builder, args[0], sig.args[0], types.int64)
        fnty = ir.FunctionType(ir.VoidType(), [i8p])
        slot = builder.inttoptr(builder.add(a, ir.IntType(64)(64)), fnty.as_pointer().as_pointer())
        fn = builder.load(slot)
        with builder.if_then(builder.not_(cgutils.is_null(builder, fn))):
            builder.call(fn, [builder.inttoptr(a, i8p)])
        return context.get_dummy_value()

    return types.void(addr), codegen


@jit(llvm_inline=True)
def hugepages(a):
    """``a`` (a fresh array, not yet written), its pages asked for as transparent huge
    pages when it is big; a hint only, results never depend on it."""
    nbytes = a.size * a.itemsize
    if nbytes >= _HUGE_MIN:
        start = _data_address(a)
        lo = (start + 4095) & ~4095
        if start + nbytes > lo:
            _madvise_huge(lo, start + nbytes - lo)
    return a
