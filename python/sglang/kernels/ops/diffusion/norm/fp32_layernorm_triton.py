# SPDX-License-Identifier: Apache-2.0
# The Welford replay follows ATen's vectorized_layer_norm_kernel (PyTorch,
# aten/src/ATen/native/cuda/layer_norm_kernel.cu); the code is this project's.
"""The Triton kernels behind ``fp32_layernorm_bitexact`` (its docstring holds
the numerics contract they implement).

* ``_fp32_norm_kernel``: four warps per row, ATen's 128 lanes one per thread;
  each warp's merged state crosses to the others once, through shared memory;
  it can ask L1 for a row's scale and shift when the row starts (WARM_L1, a
  prefetch: no value, no result bit), and run over a smaller grid, each
  program looping over a contiguous chunk of rows (LOOP, ``_norm_row`` per
  row);
* ``_fp32_norm_rows_kernel``: one warp over ROWS rows, each thread playing four
  of ATen's lanes, so ATen's step between warps needs no exchange at all.

Both compute the same operations in the same order, so the same bits; which
one a launch takes is a speed choice (``_tuning`` in the ops module). Neither
divides in its merges: their count arithmetic depends only on D, so it is
folded into compile-time constants (``merge_counts``; a table of the same
numbers where a warp's lanes mix counts), and both run ATen's step between
warps through ``_merge_warps``. Nor do they divide to find a row's batch and
frame: those are quotients by launch constants, taken as a multiply-high and a
shift (``quotient_reciprocal``, ``_quotient``).
Without Triton (or with one older than 3.5, which lacks ``constexpr_function``),
``triton`` is ``None`` and only ``quotient_reciprocal`` (plain Python) is
defined.
"""

try:
    import triton
    import triton.language as tl
    from triton import constexpr_function

    from sglang.kernels.numerics import (
        round_fp32_to,
        welford_combine_coef,
        welford_online_update,
    )
except ImportError:  # CPU-only installs and platforms without Triton
    triton = None
    tl = None

# a CUDA grid has fewer than 2**31 programs per dimension and the tuning gives
# each program one row, so every row index, the dividend of every quotient the
# kernels take, is below 2**31 (a row past the end of a multi-row program only
# feeds masked loads)
_QUOTIENT_BITS = 31


def quotient_reciprocal(d: int) -> tuple:
    """``(mul, shift)`` such that ``umulhi(2 * n, mul) >> shift == n // d``
    (``umulhi``: the high 32 bits of a 32 x 32-bit unsigned product) for every
    integer ``0 <= n < 2**31``, for a divisor ``1 <= d < 2**31``; what the
    kernels' ``_quotient`` takes.

    ``shift = ceil(log2 d)`` and ``mul = ceil(2**(31 + shift) / d)``, which
    lies in ``[2**31, 2**32)``, so both factors fit 32 bits, and the result
    is ``floor(n * mul / 2**(31 + shift))``. That is exact: ``e = mul * d -
    2**(31 + shift)`` is below ``d <= 2**shift``, so ``n * mul / 2**(31 +
    shift) = n / d + n * e / (d * 2**(31 + shift))`` lies in ``[n / d, n / d
    + 1 / d)``, whose floor is ``n // d`` (Granlund and Montgomery, 1994,
    theorem 4.2). A row's batch and frame are such quotients by launch
    constants; the kernels take them with a multiply and two shifts where a
    ``div.s32`` costs about 20 instructions.
    """
    if not isinstance(d, int) or not 1 <= d < 1 << _QUOTIENT_BITS:
        raise ValueError(f"divisor {d!r} is not an integer in [1, 2**31)")
    shift = (d - 1).bit_length()
    return -(-(1 << (_QUOTIENT_BITS + shift)) // d), shift


if triton is not None:

    # The merges' count arithmetic, in plain Python: the kernels fold it into
    # compile-time constants (constexpr functions), and _merge_coefficients
    # builds its table from the same functions.

    @constexpr_function
    def fp32_ratio(p, q):
        """The fp32 nearest to ``p / q`` (positive integers, a normal fp32
        result), ties to even: exact rational rounding, no double rounding."""
        shift = 23 - (p.bit_length() - q.bit_length())
        num, den = (p << shift, q) if shift >= 0 else (p, q << -shift)
        if num < den << 23:
            num, shift = num << 1, shift + 1
        mant, rem = num // den, num % den
        if 2 * rem > den or (2 * rem == den and mant % 2 == 1):
            mant += 1
        return mant * 2.0**-shift

    @constexpr_function
    def merge_counts(a_n, b_n):
        """The count arithmetic of ATen's ``cuWelfordCombine`` for counts known
        in advance: ``(a_n, n_a, n_b)`` with ``coef = 1 / (a_n + b_n)`` and
        ``n_x = x_n * coef``, each rounded to fp32 as ATen's fp32 code rounds
        it (what ``welford_combine_coef`` takes); zeros for an empty merge."""
        if a_n + b_n == 0:
            return (0.0, 0.0, 0.0)
        num, den = fp32_ratio(1, a_n + b_n).as_integer_ratio()
        n_a = fp32_ratio(a_n * num, den) if a_n else 0.0
        n_b = fp32_ratio(b_n * num, den) if b_n else 0.0
        return (float(a_n), n_a, n_b)

    @constexpr_function
    def lane_count(dim, lane):
        """Elements ATen's lane ``lane`` reduces in a row of ``dim``: its
        vectors of 4 are ``lane``, ``lane + 128``, ... below ``dim // 4``."""
        return 4 * max(0, (dim // 4 - lane + 127) // 128)

    @constexpr_function
    def warp_merge_count(dim, receiver, incoming, k):
        """Entry ``k`` of ``merge_counts`` for ATen's step between warps;
        ``receiver`` and ``incoming`` are bit masks of the ATen warps whose
        merged states meet (0b0101: warps 0 and 2)."""
        a_n = 0
        b_n = 0
        for warp in range(4):
            for lane in range(32 * warp, 32 * warp + 32):
                a_n += lane_count(dim, lane) * (incoming >> warp & 1)
                b_n += lane_count(dim, lane) * (receiver >> warp & 1)
        return merge_counts(a_n, b_n)[k]

    @constexpr_function
    def shuffle_merge_count(dim, stage, lane, k):
        """Entry ``k`` of ``merge_counts`` for ATen's in-warp stage ``stage``
        (shfl_down by 16 >> stage) at ``lane``, in a warp whose lanes all have
        ``lane``'s count (both sides then hold 2 ** stage times it)."""
        count = lane_count(dim, lane) << stage
        return merge_counts(count, count)[k]

    @triton.jit
    def _tile(k, lanes, vec, N: tl.constexpr):
        # iteration k (a compile-time constant) of ATen's per-thread loop: lane
        # t takes vector k * 128 + t; returns its columns and the lanes that own
        # a vector; where the tile is full, that is a constant true, which the
        # compiler folds away (no predicates, no selects)
        vidx = k * 128 + lanes
        cols = vidx[:, None] * 4 + vec[None, :]
        if (k + 1) * 128 <= N // 4:
            active = tl.full([128], 1, tl.int1)
        else:
            active = vidx < N // 4
        return cols, active

    # quotient_reciprocal's ints: every divisor gets its own (mul, shift), and
    # specializing on them would only compile more variants (multiples of 16)
    # or turn a shift of 1 into a constant, which _quotient does not take
    _RECIPROCALS = tuple(
        f"{operand}_{part}"
        for operand in ("l", "g", "sc", "sh")
        for part in ("mul", "shift")
    )

    @triton.jit
    def _quotient(n, reciprocal):
        # n // d for a row index n, from d's quotient_reciprocal (mul, shift),
        # in 32-bit operations (int32 in, int32 out)
        hi = tl.umulhi(n.to(tl.uint32) << 1, reciprocal[0].to(tl.uint32))
        return (hi >> reciprocal[1].to(tl.uint32)).to(tl.int32)

    @triton.jit
    def _row_position(row, L, l_reciprocal):
        # (batch, index in the batch) of a row of [B, L, D], as int64 for the
        # offsets; computed in int32 (row < 2**31), where the offsets' products
        # widen from 32 bits, as they did from the divisions these replace
        r = row.to(tl.int32)
        bi = _quotient(r, l_reciprocal)
        return bi.to(tl.int64), (r - bi * L).to(tl.int64)

    @triton.jit
    def _modulation_row(bi, li, stride_b, stride_f, frame):
        # where row li of batch bi finds its modulation row: frame li // (L // F)
        fi = li
        if frame[2]:
            fi = _quotient(li, frame).to(tl.int64)
        return bi * stride_b + fi * stride_f

    @triton.jit
    def _load_modulation(ptr, bi, li, cols, mask, stride_b, stride_f, stride_d, frame):
        # a [B, F, D] view broadcast over the L rows of a batch: row li reads
        # frame li // (L // F); ``frame`` holds that divisor's
        # quotient_reciprocal and PER_FRAME. Without per-frame operands F is 1
        # (stride_f 0) or L, so the frame is li and no quotient is taken. Every
        # row of a frame reads the same modulation row: evict_last keeps it in
        # L1 against the streamed rows (H200, see _load_row)
        offs = _modulation_row(bi, li, stride_b, stride_f, frame) + cols * stride_d
        return tl.load(
            ptr + offs, mask=mask, other=0.0, eviction_policy="evict_last"
        ).to(tl.float32)

    @triton.jit
    def _prefetch_modulation(ptr, bi, li, lanes, stride_b, stride_f, stride_d,
                             frame, N: tl.constexpr, ITERS: tl.constexpr):  # fmt: skip
        # a hint, no value: ask L1 for the row's modulation (one address per
        # lane and tile, as _load_modulation will read it) at the start of the
        # row, so that the output pass, after the statistics, finds it there
        # instead of waiting on L2. A prefetch has no destination register.
        base = _modulation_row(bi, li, stride_b, stride_f, frame)
        for k in tl.static_range(ITERS):
            vidx = k * 128 + lanes
            # a lane without a vector asks for the row's first one again
            offs = base + tl.where(vidx < N // 4, vidx * 4, 0) * stride_d
            tl.inline_asm_elementwise(
                "prefetch.global.L1 [$1];\n\tmov.u32 $0, 0;",
                "=r,l",
                [(ptr + offs).to(tl.int64)],
                dtype=tl.int32,
                is_pure=False,
                pack=1,
            )

    @triton.jit
    def _load_row(ptr, offs, mask):
        # x and the residual are read once (the kernels keep what they reuse
        # in registers), so they stream through L2 only (.cg) and leave L1 to
        # the modulation. Measured on an H200 against plain loads, with
        # _load_modulation's evict_last: LayerNormScaleShift 32760x5120 with
        # per-frame fp32 modulation 194 against 236 us, ScaleResidual 32760x5120
        # 339 against 362 us, ScaleResidual 32760x1280 per-frame 100 against
        # 121 us; no case slower.
        return tl.load(ptr + offs, mask=mask, other=0.0, cache_modifier=".cg")

    @triton.jit
    def _norm_input_tile(
        X,
        RES,
        GATE,
        row,
        bi,
        li,
        cols,
        mask,
        stride_x,
        stride_res,
        g_sb,
        g_sf,
        g_sd,
        g_frame,
        HAS_RESIDUAL: tl.constexpr,
        HAS_GATE: tl.constexpr,
        G1_RND: tl.constexpr,
        R_RND: tl.constexpr,
    ):
        # the values the norm sees: x, or residual + x * gate rounded as eager would
        v = _load_row(X, row * stride_x + cols, mask).to(tl.float32)
        if HAS_RESIDUAL:
            if HAS_GATE:
                g = _load_modulation(
                    GATE, bi, li, cols, mask, g_sb, g_sf, g_sd, g_frame
                )
                v = round_fp32_to(v * g, G1_RND)
            res = _load_row(RES, row * stride_res + cols, mask)
            v = round_fp32_to(res.to(tl.float32) + v, R_RND)
        return v

    @triton.jit
    def _merge_lanes(
        mean, m2, lanes, COEF, N: tl.constexpr, MEAN_FMA: tl.constexpr,
        M2_FMA: tl.constexpr,
    ):  # fmt: skip
        # ATen's order: shfl_down 16..1 inside each warp, then its step between
        # warps. Lanes other than each warp's lane 0 also merge (wrapped
        # partners), but nothing reads them. The gathers run on [4, 32] views,
        # which are warp-local, so Triton lowers them to shuffles (reshape/split
        # halvings instead got layouts replicated in every thread: 255
        # registers, 3.7x the copy floor at D=5120); the merges run on the 1-D
        # lanes, where a table's loads (_shuffle_counts) share the state's
        # layout (as [4, 32] they got one of their own, and 48 more barriers).
        lane = tl.reshape(lanes, (4, 32)) % 32
        for stage in tl.static_range(5):
            src = (lane + (16 >> stage)) % 32
            incoming = (
                tl.reshape(tl.gather(tl.reshape(mean, (4, 32)), src, 1), (128,)),
                tl.reshape(tl.gather(tl.reshape(m2, (4, 32)), src, 1), (128,)),
            )
            a_n, n_a, n_b = _shuffle_counts(COEF + stage * 384 + lanes, lanes, stage, N)
            mean, m2 = welford_combine_coef(
                mean, m2, incoming[0], incoming[1], a_n, n_a, n_b, MEAN_FMA, M2_FMA
            )
        # each warp's lane 0, to every thread: one exchange through shared
        # memory, after which the step between warps runs in registers (as
        # gathers over the 128 lanes it took 15 barriers in all; now 3)
        first = tl.zeros((4, 1), tl.int32)
        mean01, mean23 = _warp_pairs(tl.gather(tl.reshape(mean, (4, 32)), first, 1))
        m2_01, m2_23 = _warp_pairs(tl.gather(tl.reshape(m2, (4, 32)), first, 1))
        mean0, mean1 = _halves(mean01)
        mean2, mean3 = _halves(mean23)
        m2_0, m2_1 = _halves(m2_01)
        m2_2, m2_3 = _halves(m2_23)
        mean, m2 = _merge_warps(
            (mean0, m2_0), (mean1, m2_1), (mean2, m2_2), (mean3, m2_3), N,
            MEAN_FMA, M2_FMA,
        )  # fmt: skip
        return tl.broadcast_to(mean, (128,)), tl.broadcast_to(m2, (128,))

    @triton.jit
    def _shuffle_counts(table, aten_lane, stage: tl.constexpr, N: tl.constexpr):
        # (a_n, n_a, n_b) of in-warp stage ``stage`` at each ATen lane. Where
        # every warp's lanes share one count (N / 4 a multiple of 32: all of
        # Wan's widths) they are compile-time constants, one value for the
        # lanes below N / 4 % 128 and one above; else _merge_coefficients'
        # entries at ``table``. Constants, because the merges are one serial
        # chain: an L1 load per stage is as long on it as a division (H200)
        if (N // 4) % 32 == 0:
            first = aten_lane < (N // 4) % 128
            a_n = tl.where(
                first, shuffle_merge_count(N, stage, 0, 0),
                shuffle_merge_count(N, stage, 127, 0),
            )  # fmt: skip
            n_a = tl.where(
                first, shuffle_merge_count(N, stage, 0, 1),
                shuffle_merge_count(N, stage, 127, 1),
            )  # fmt: skip
            n_b = n_a  # equal counts
        else:
            a_n = tl.load(table)
            n_a = tl.load(table + 128)
            n_b = tl.load(table + 256)
        return a_n, n_a, n_b

    @triton.jit
    def _warp_pairs(w):
        # [4, 1] values, one per warp -> ([w0, w1], [w2, w3])
        return tl.split(tl.permute(tl.reshape(w, (2, 2)), (1, 0)))

    @triton.jit
    def _halves(w):
        # [w0, w1] -> ([w0], [w1])
        return tl.split(tl.reshape(w, (1, 2)))

    @triton.jit
    def _merge_warps(w0, w1, w2, w3, N: tl.constexpr, MEAN_FMA: tl.constexpr,
                     M2_FMA: tl.constexpr):  # fmt: skip
        # ATen's step between its four warps, on each warp's (mean, m2): warps
        # 0 <- 2 and 1 <- 3, then 0 <- 1; their counts are compile-time constants
        b = _merge_const(w0, w2, N, 0b0001, 0b0100, MEAN_FMA, M2_FMA)
        a = _merge_const(w1, w3, N, 0b0010, 0b1000, MEAN_FMA, M2_FMA)
        return _merge_const(b, a, N, 0b0101, 0b1010, MEAN_FMA, M2_FMA)

    @triton.jit
    def _merge_const(
        b, a, N: tl.constexpr, B_WARPS: tl.constexpr, A_WARPS: tl.constexpr,
        MEAN_FMA: tl.constexpr, M2_FMA: tl.constexpr,
    ):  # fmt: skip
        return welford_combine_coef(
            b[0], b[1], a[0], a[1], warp_merge_count(N, B_WARPS, A_WARPS, 0),
            warp_merge_count(N, B_WARPS, A_WARPS, 1),
            warp_merge_count(N, B_WARPS, A_WARPS, 2), MEAN_FMA, M2_FMA,
        )  # fmt: skip

    @triton.jit
    def _welford_vec4(v, mean, m2, active, k, ONLINE_FMA: tl.constexpr):
        # iteration k of ATen's per-thread loop over one [..., 128, 4] tile: the
        # vector's four elements in order, 1/count folded to constants (each
        # rounded once to fp32, as ATen's ``1.f / count``)
        v02, v13 = tl.split(tl.reshape(v, v.shape[:-1] + [2, 2]))
        v0, v2 = tl.split(v02)
        v1, v3 = tl.split(v13)
        mean, m2 = welford_online_update(
            v0, mean, m2, active, 1.0 / (4 * k + 1), ONLINE_FMA
        )
        mean, m2 = welford_online_update(
            v1, mean, m2, active, 1.0 / (4 * k + 2), ONLINE_FMA
        )
        mean, m2 = welford_online_update(
            v2, mean, m2, active, 1.0 / (4 * k + 3), ONLINE_FMA
        )
        mean, m2 = welford_online_update(
            v3, mean, m2, active, 1.0 / (4 * k + 4), ONLINE_FMA
        )
        return mean, m2

    @triton.jit
    def _tile_at(k, lanes, vec, row_ok, N: tl.constexpr, ROWS3: tl.constexpr):
        # tile k as the kernel holds it: [128, 4] (a row over four warps), or
        # [ROWS, 128, 4] (ROWS3: rows over one warp, rows past the end masked
        # by row_ok); returns columns, load mask and the Welford lanes' mask
        cols, active = _tile(k, lanes, vec, N)
        if ROWS3:
            mask = active[None, :, None] & row_ok
            cols = cols[None, :, :]
            active = active[None, :]
        else:
            mask = active[:, None]
        return cols, mask, active

    @triton.jit
    def _param_tiles(
        W, B, SCALE, SHIFT, cols, mask, bi, li, sc_sb, sc_sf, sc_sd, sc_frame,
        sh_sb, sh_sf, sh_sd, sh_frame,
        HAS_W: tl.constexpr,
        HAS_B: tl.constexpr,
        HAS_MOD: tl.constexpr,
    ):  # fmt: skip
        # what the output pass reads besides the norm's input (0.0: absent)
        w = 0.0
        bias = 0.0
        scale = 0.0
        shift = 0.0
        if HAS_W:
            w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_B:
            bias = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_MOD:
            scale = _load_modulation(
                SCALE, bi, li, cols, mask, sc_sb, sc_sf, sc_sd, sc_frame
            )
            shift = _load_modulation(
                SHIFT, bi, li, cols, mask, sh_sb, sh_sf, sh_sd, sh_frame
            )
        return w, bias, scale, shift

    @triton.jit
    def _output_tile(
        v, params, Y, RES_OUT, cols, mask, row, mean, rstd, stride_y,
        stride_res_out,
        HAS_RESIDUAL: tl.constexpr,
        HAS_W: tl.constexpr,
        HAS_B: tl.constexpr,
        HAS_MOD: tl.constexpr,
        R_RND: tl.constexpr,
        S_RND: tl.constexpr,
        M1_RND: tl.constexpr,
        M_RND: tl.constexpr,
        OUT_FMA: tl.constexpr,
    ):  # fmt: skip
        # one tile of the second pass: normalize the norm's input v, [modulate,]
        # store (and store v as the residual output: storing it in the first
        # pass instead was 1.1-1.4x slower for the residual module, H200)
        w, bias, scale, shift = params
        centered = v - mean
        if HAS_W:
            out = w * (rstd * centered)
            if HAS_B:
                if OUT_FMA:
                    out = tl.fma(w, rstd * centered, bias)
                else:
                    out = out + bias
        elif HAS_B:
            # measured: ATen's build does not contract this one
            out = rstd * centered + bias
        else:
            out = rstd * centered
        # FP32LayerNorm hands the modulation its output in the norm's input dtype
        out = round_fp32_to(out, R_RND)
        if HAS_MOD:
            out = round_fp32_to(out * round_fp32_to(scale + 1.0, S_RND), M1_RND)
            out = round_fp32_to(out + shift, M_RND)
        tl.store(Y + row * stride_y + cols, out.to(Y.dtype.element_ty), mask=mask)
        if HAS_RESIDUAL:
            tl.store(
                RES_OUT + row * stride_res_out + cols,
                v.to(RES_OUT.dtype.element_ty),
                mask=mask,
            )

    @triton.jit
    def _input_pass(
        X, RES, GATE, W, B, SCALE, SHIFT, row, bi, li, lanes, vec, row_ok,
        mean, m2, stride_x, stride_res, g_sb, g_sf, g_sd, g_frame, sc_sb, sc_sf,
        sc_sd, sc_frame, sh_sb, sh_sf, sh_sd, sh_frame,
        N: tl.constexpr,
        ITERS: tl.constexpr,
        HAS_RESIDUAL: tl.constexpr,
        HAS_GATE: tl.constexpr,
        HAS_W: tl.constexpr,
        HAS_B: tl.constexpr,
        HAS_MOD: tl.constexpr,
        G1_RND: tl.constexpr,
        R_RND: tl.constexpr,
        ONLINE_FMA: tl.constexpr,
        KEEP: tl.constexpr,
        PREFETCH: tl.constexpr,
        ROWS3: tl.constexpr,
    ):  # fmt: skip
        # ATen's per-lane Welford over the row, statically unrolled so that all
        # of a row's loads are in flight at once. KEEP returns the input tiles
        # and PREFETCH the output pass's other operands (loaded here, before the
        # statistics, instead of after them), as tuples indexed by tile.
        tiles = ()
        params = ()
        for k in tl.static_range(ITERS):
            cols, mask, act = _tile_at(k, lanes, vec, row_ok, N, ROWS3)
            if PREFETCH:
                params = params + (
                    _param_tiles(
                        W, B, SCALE, SHIFT, cols, mask, bi, li, sc_sb, sc_sf,
                        sc_sd, sc_frame, sh_sb, sh_sf, sh_sd, sh_frame, HAS_W,
                        HAS_B, HAS_MOD,
                    ),
                )  # fmt: skip
            v = _norm_input_tile(
                X, RES, GATE, row, bi, li, cols, mask, stride_x, stride_res,
                g_sb, g_sf, g_sd, g_frame, HAS_RESIDUAL, HAS_GATE, G1_RND,
                R_RND,
            )  # fmt: skip
            mean, m2 = _welford_vec4(v, mean, m2, act, k, ONLINE_FMA)
            if KEEP:
                tiles = tiles + (v,)
        return mean, m2, tiles, params

    @triton.jit
    def _output_pass(
        tiles, params, X, RES, GATE, W, B, SCALE, SHIFT, Y, RES_OUT, row, bi,
        li, lanes, vec, row_ok, mean, rstd, stride_x, stride_res, stride_y,
        stride_res_out, g_sb, g_sf, g_sd, g_frame, sc_sb, sc_sf, sc_sd,
        sc_frame, sh_sb, sh_sf, sh_sd, sh_frame,
        N: tl.constexpr,
        ITERS: tl.constexpr,
        HAS_RESIDUAL: tl.constexpr,
        HAS_GATE: tl.constexpr,
        HAS_W: tl.constexpr,
        HAS_B: tl.constexpr,
        HAS_MOD: tl.constexpr,
        G1_RND: tl.constexpr,
        R_RND: tl.constexpr,
        S_RND: tl.constexpr,
        M1_RND: tl.constexpr,
        M_RND: tl.constexpr,
        OUT_FMA: tl.constexpr,
        KEEP: tl.constexpr,
        PREFETCH: tl.constexpr,
        ROWS3: tl.constexpr,
    ):  # fmt: skip
        # the second pass over the row: what _input_pass kept, or loaded again
        for k in tl.static_range(ITERS):
            cols, mask, act = _tile_at(k, lanes, vec, row_ok, N, ROWS3)
            if KEEP:
                v = tiles[k]
            else:
                v = _norm_input_tile(
                    X, RES, GATE, row, bi, li, cols, mask, stride_x,
                    stride_res, g_sb, g_sf, g_sd, g_frame, HAS_RESIDUAL,
                    HAS_GATE, G1_RND, R_RND,
                )  # fmt: skip
            if PREFETCH:
                p = params[k]
            else:
                p = _param_tiles(
                    W, B, SCALE, SHIFT, cols, mask, bi, li, sc_sb, sc_sf, sc_sd,
                    sc_frame, sh_sb, sh_sf, sh_sd, sh_frame, HAS_W, HAS_B,
                    HAS_MOD,
                )  # fmt: skip
            _output_tile(
                v, p, Y, RES_OUT, cols, mask, row, mean, rstd, stride_y,
                stride_res_out, HAS_RESIDUAL, HAS_W, HAS_B, HAS_MOD, R_RND,
                S_RND, M1_RND, M_RND, OUT_FMA,
            )  # fmt: skip

    @triton.jit
    def _norm_row(
        row, args, N: tl.constexpr, ITERS: tl.constexpr,
        HAS_RESIDUAL: tl.constexpr, HAS_GATE: tl.constexpr, HAS_W: tl.constexpr,
        HAS_B: tl.constexpr, HAS_MOD: tl.constexpr, STORE_STATS: tl.constexpr,
        G1_RND: tl.constexpr, R_RND: tl.constexpr, S_RND: tl.constexpr,
        M1_RND: tl.constexpr, M_RND: tl.constexpr, ONLINE_FMA: tl.constexpr,
        MERGE_MEAN_FMA: tl.constexpr, MERGE_M2_FMA: tl.constexpr,
        OUT_FMA: tl.constexpr, KEEP: tl.constexpr, PREFETCH: tl.constexpr,
        PER_FRAME: tl.constexpr, WARM_L1: tl.constexpr,
    ):  # fmt: skip
        # _fp32_norm_kernel's work on one row (an int64 index); ``args`` are
        # the kernel's arguments from X to eps
        (
            X, RES, GATE, W, B, SCALE, SHIFT, Y, RES_OUT, MEAN, RSTD, COEF,
            stride_x, stride_res, stride_y, stride_res_out, L, l_mul, l_shift,
            g_sb, g_sf, g_sd, g_mul, g_shift, sc_sb, sc_sf, sc_sd, sc_mul,
            sc_shift, sh_sb, sh_sf, sh_sd, sh_mul, sh_shift, eps,
        ) = args  # fmt: skip
        bi, li = _row_position(row, L, (l_mul, l_shift))
        g_frame = (g_mul, g_shift, PER_FRAME)
        sc_frame = (sc_mul, sc_shift, PER_FRAME)
        sh_frame = (sh_mul, sh_shift, PER_FRAME)
        lanes = tl.arange(0, 128)
        vec = tl.arange(0, 4)
        if WARM_L1 and HAS_MOD:
            _prefetch_modulation(
                SCALE, bi, li, lanes, sc_sb, sc_sf, sc_sd, sc_frame, N, ITERS
            )
            _prefetch_modulation(
                SHIFT, bi, li, lanes, sh_sb, sh_sf, sh_sd, sh_frame, N, ITERS
            )

        mean = tl.zeros([128], dtype=tl.float32)
        m2 = tl.zeros([128], dtype=tl.float32)
        row_ok = True
        mean, m2, tiles, params = _input_pass(
            X, RES, GATE, W, B, SCALE, SHIFT, row, bi, li, lanes, vec, row_ok,
            mean, m2, stride_x, stride_res, g_sb, g_sf, g_sd, g_frame, sc_sb,
            sc_sf, sc_sd, sc_frame, sh_sb, sh_sf, sh_sd, sh_frame, N, ITERS,
            HAS_RESIDUAL, HAS_GATE, HAS_W, HAS_B, HAS_MOD, G1_RND, R_RND,
            ONLINE_FMA, KEEP, PREFETCH, False,
        )  # fmt: skip

        mean, m2 = _merge_lanes(mean, m2, lanes, COEF, N, MERGE_MEAN_FMA, MERGE_M2_FMA)
        var = tl.math.div_rn(m2, tl.full(m2.shape, N, tl.float32))
        rstd = tl.math.rsqrt(var + eps)
        if STORE_STATS:
            tl.store(MEAN + row + lanes, mean, mask=lanes == 0)
            tl.store(RSTD + row + lanes, rstd, mask=lanes == 0)
        _output_pass(
            tiles, params, X, RES, GATE, W, B, SCALE, SHIFT, Y, RES_OUT, row,
            bi, li, lanes, vec, row_ok, mean[:, None], rstd[:, None], stride_x,
            stride_res, stride_y, stride_res_out, g_sb, g_sf, g_sd, g_frame,
            sc_sb, sc_sf, sc_sd, sc_frame, sh_sb, sh_sf, sh_sd, sh_frame, N,
            ITERS, HAS_RESIDUAL, HAS_GATE, HAS_W, HAS_B, HAS_MOD, G1_RND, R_RND,
            S_RND, M1_RND, M_RND, OUT_FMA, KEEP, PREFETCH, False,
        )  # fmt: skip

    @triton.jit(do_not_specialize=_RECIPROCALS + ("M",))
    def _fp32_norm_kernel(
        X, RES, GATE, W, B, SCALE, SHIFT, Y, RES_OUT, MEAN, RSTD, COEF,
        stride_x, stride_res, stride_y, stride_res_out, L, l_mul, l_shift,
        g_sb, g_sf, g_sd, g_mul, g_shift, sc_sb, sc_sf, sc_sd, sc_mul, sc_shift,
        sh_sb, sh_sf, sh_sd, sh_mul, sh_shift, M, eps,
        N: tl.constexpr,
        ITERS: tl.constexpr,
        HAS_RESIDUAL: tl.constexpr,
        HAS_GATE: tl.constexpr,
        HAS_W: tl.constexpr,
        HAS_B: tl.constexpr,
        HAS_MOD: tl.constexpr,
        STORE_STATS: tl.constexpr,
        G1_RND: tl.constexpr,
        R_RND: tl.constexpr,
        S_RND: tl.constexpr,
        M1_RND: tl.constexpr,
        M_RND: tl.constexpr,
        ONLINE_FMA: tl.constexpr,
        MERGE_MEAN_FMA: tl.constexpr,
        MERGE_M2_FMA: tl.constexpr,
        OUT_FMA: tl.constexpr,
        KEEP: tl.constexpr,
        PREFETCH: tl.constexpr,
        PER_FRAME: tl.constexpr,
        WARM_L1: tl.constexpr,
        LOOP: tl.constexpr,
    ):  # fmt: skip
        """One row per program: [residual + gate * x ->] fp32 LayerNorm [-> modulate].

        The statistics replay ATen's vectorized CUDA LayerNorm exactly: 128 lanes,
        lane t owns 4-element vectors t, t + 128, ... and runs a sequential Welford
        over them; lanes then merge in the order of its warp shuffles (offsets 16..1)
        and its shared-memory step over the 4 warps. Same operations, same order,
        same FMA contractions, so the same bits.

        LOOP: a grid smaller than the M rows, each program taking a contiguous
        chunk of them in order, so that an SM's programs read one or two
        frames' modulation instead of every frame's (the rows' work unchanged).
        """
        # the arguments of _norm_row after the row, named once for both paths
        args = (
            X, RES, GATE, W, B, SCALE, SHIFT, Y, RES_OUT, MEAN, RSTD, COEF,
            stride_x, stride_res, stride_y, stride_res_out, L, l_mul, l_shift,
            g_sb, g_sf, g_sd, g_mul, g_shift, sc_sb, sc_sf, sc_sd, sc_mul,
            sc_shift, sh_sb, sh_sf, sh_sd, sh_mul, sh_shift, eps,
        )  # fmt: skip
        # a constexpr branch keeps the one-row kernel free of a loop (a loop
        # of one trip compiles differently: a barrier and registers more)
        if LOOP:
            per = (M + tl.num_programs(0) - 1) // tl.num_programs(0)
            row = tl.program_id(0) * per
            end = tl.minimum(row + per, M)
            while row < end:
                _norm_row(
                    row.to(tl.int64), args, N, ITERS, HAS_RESIDUAL, HAS_GATE,
                    HAS_W, HAS_B, HAS_MOD, STORE_STATS, G1_RND, R_RND, S_RND,
                    M1_RND, M_RND, ONLINE_FMA, MERGE_MEAN_FMA, MERGE_M2_FMA,
                    OUT_FMA, KEEP, PREFETCH, PER_FRAME, WARM_L1,
                )  # fmt: skip
                row += 1
        else:
            _norm_row(
                tl.program_id(0).to(tl.int64), args, N, ITERS, HAS_RESIDUAL,
                HAS_GATE, HAS_W, HAS_B, HAS_MOD, STORE_STATS, G1_RND, R_RND,
                S_RND, M1_RND, M_RND, ONLINE_FMA, MERGE_MEAN_FMA, MERGE_M2_FMA,
                OUT_FMA, KEEP, PREFETCH, PER_FRAME, WARM_L1,
            )  # fmt: skip

    @triton.jit
    def _merge_warp_lanes(
        mean, m2, COEF, N: tl.constexpr, ROWS: tl.constexpr,
        MEAN_FMA: tl.constexpr, M2_FMA: tl.constexpr,
    ):  # fmt: skip
        # _merge_lanes for [ROWS, 128] states held by one warp (its lane l holds
        # ATen's lanes l, 32 + l, 64 + l and 96 + l): the same merges in the
        # same order, with ATen's shared-memory step between warps done in
        # registers. Returns each row's (mean, m2) as [ROWS, 128].
        mean = tl.reshape(mean, (ROWS, 4, 32))
        m2 = tl.reshape(m2, (ROWS, 4, 32))
        lane = tl.arange(0, 32)[None, None, :]
        warp = tl.arange(0, 4)[None, :, None]
        # the table's second copy is lane-major, ATen's lane 32w + l at 4l + w,
        # so a thread's four entries are one 16-byte load in the state's layout
        lane_major = COEF + 5 * 384 + lane * 4 + warp
        for stage in tl.static_range(5):
            src = tl.broadcast_to((lane + (16 >> stage)) % 32, (ROWS, 4, 32))
            a_n, n_a, n_b = _shuffle_counts(
                lane_major + stage * 384, warp * 32 + lane, stage, N
            )
            mean, m2 = welford_combine_coef(
                mean, m2, tl.gather(mean, src, 2), tl.gather(m2, src, 2), a_n,
                n_a, n_b, MEAN_FMA, M2_FMA,
            )  # fmt: skip
        # [ROWS, 32, 2, 2]: ATen's warp w = 2a + b on the last two axes
        mean_02, mean_13 = tl.split(
            tl.reshape(tl.permute(mean, (0, 2, 1)), (ROWS, 32, 2, 2))
        )
        m2_02, m2_13 = tl.split(tl.reshape(tl.permute(m2, (0, 2, 1)), (ROWS, 32, 2, 2)))
        mean0, mean2 = tl.split(mean_02)
        mean1, mean3 = tl.split(mean_13)
        m2_0, m2_2 = tl.split(m2_02)
        m2_1, m2_3 = tl.split(m2_13)
        mean, m2 = _merge_warps(
            (mean0, m2_0), (mean1, m2_1), (mean2, m2_2), (mean3, m2_3), N,
            MEAN_FMA, M2_FMA,
        )  # fmt: skip
        # lane 0's result to every lane, then to all four of its ATen lanes
        first = tl.zeros((ROWS, 32), tl.int32)
        mean = tl.broadcast_to(tl.gather(mean, first, 1)[:, None, :], (ROWS, 4, 32))
        m2 = tl.broadcast_to(tl.gather(m2, first, 1)[:, None, :], (ROWS, 4, 32))
        return tl.reshape(mean, (ROWS, 128)), tl.reshape(m2, (ROWS, 128))

    @triton.jit(do_not_specialize=_RECIPROCALS)
    def _fp32_norm_rows_kernel(
        X, RES, GATE, W, B, SCALE, SHIFT, Y, RES_OUT, MEAN, RSTD, COEF,
        stride_x, stride_res, stride_y, stride_res_out, L, l_mul, l_shift,
        g_sb, g_sf, g_sd, g_mul, g_shift, sc_sb, sc_sf, sc_sd, sc_mul, sc_shift,
        sh_sb, sh_sf, sh_sd, sh_mul, sh_shift, M, eps,
        N: tl.constexpr,
        ITERS: tl.constexpr,
        HAS_RESIDUAL: tl.constexpr,
        HAS_GATE: tl.constexpr,
        HAS_W: tl.constexpr,
        HAS_B: tl.constexpr,
        HAS_MOD: tl.constexpr,
        STORE_STATS: tl.constexpr,
        G1_RND: tl.constexpr,
        R_RND: tl.constexpr,
        S_RND: tl.constexpr,
        M1_RND: tl.constexpr,
        M_RND: tl.constexpr,
        ONLINE_FMA: tl.constexpr,
        MERGE_MEAN_FMA: tl.constexpr,
        MERGE_M2_FMA: tl.constexpr,
        OUT_FMA: tl.constexpr,
        ROWS: tl.constexpr,
        KEEP: tl.constexpr,
        PREFETCH: tl.constexpr,
        PER_FRAME: tl.constexpr,
    ):  # fmt: skip
        """``_fp32_norm_kernel`` as one warp (``num_warps=1``) over ROWS rows.

        Same arithmetic in the same order, so the same bits: each of the warp's
        lanes plays four of ATen's 128 lanes (registers), so ATen's step
        between warps needs no shared memory or barrier, and each thread runs
        4 x ROWS independent Welford chains.
        """
        row1 = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        row_ok = (row1 < M)[:, None, None]
        row = row1[:, None, None]
        bi, li = _row_position(row, L, (l_mul, l_shift))
        g_frame = (g_mul, g_shift, PER_FRAME)
        sc_frame = (sc_mul, sc_shift, PER_FRAME)
        sh_frame = (sh_mul, sh_shift, PER_FRAME)
        lanes = tl.arange(0, 128)
        vec = tl.arange(0, 4)

        mean = tl.zeros([ROWS, 128], dtype=tl.float32)
        m2 = tl.zeros([ROWS, 128], dtype=tl.float32)
        mean, m2, tiles, params = _input_pass(
            X, RES, GATE, W, B, SCALE, SHIFT, row, bi, li, lanes, vec, row_ok,
            mean, m2, stride_x, stride_res, g_sb, g_sf, g_sd, g_frame, sc_sb,
            sc_sf, sc_sd, sc_frame, sh_sb, sh_sf, sh_sd, sh_frame, N, ITERS,
            HAS_RESIDUAL, HAS_GATE, HAS_W, HAS_B, HAS_MOD, G1_RND, R_RND,
            ONLINE_FMA, KEEP, PREFETCH, True,
        )  # fmt: skip

        mean, m2 = _merge_warp_lanes(
            mean, m2, COEF, N, ROWS, MERGE_MEAN_FMA, MERGE_M2_FMA
        )
        var = tl.math.div_rn(m2, tl.full(m2.shape, N, tl.float32))
        rstd = tl.math.rsqrt(var + eps)
        if STORE_STATS:
            first = (lanes[None, :] == 0) & (row1 < M)[:, None]
            tl.store(MEAN + row1[:, None] + lanes[None, :], mean, mask=first)
            tl.store(RSTD + row1[:, None] + lanes[None, :], rstd, mask=first)
        _output_pass(
            tiles, params, X, RES, GATE, W, B, SCALE, SHIFT, Y, RES_OUT, row,
            bi, li, lanes, vec, row_ok, mean[:, :, None], rstd[:, :, None],
            stride_x, stride_res, stride_y, stride_res_out, g_sb, g_sf, g_sd,
            g_frame, sc_sb, sc_sf, sc_sd, sc_frame, sh_sb, sh_sf, sh_sd,
            sh_frame, N, ITERS, HAS_RESIDUAL, HAS_GATE, HAS_W, HAS_B, HAS_MOD,
            G1_RND, R_RND, S_RND, M1_RND, M_RND, OUT_FMA, KEEP, PREFETCH, True,
        )  # fmt: skip

else:
    _fp32_norm_kernel = _fp32_norm_rows_kernel = None
    lane_count = merge_counts = None
