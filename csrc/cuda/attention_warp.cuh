// Device building blocks of the CUDA attention kernels: PTX wrappers (cp.async, ldmatrix,
// mma.sync m16n8k16), staging of tiles into shared memory, and the warp-level tile products.
//
// A warp owns 16 rows of a tile. Every score-shaped tile (scores S, dP, and the output
// accumulators) is held in the accumulator layout of mma.m16n8k16 (attention_math.cuh): lane l
// holds rows l/4 and l/4 + 8, columns 8 n + 2 (l % 4) + {0, 1} of each 8-column n-tile. The half
// types compute products on tensor cores; float32 and float64 compute the same tiles in the same
// layout with exact FMAs (the columns' values of a row are exchanged within a quad of lanes by
// shuffles), and the additive score is computed element by element in every dtype.
#pragma once

#include <cstdint>

#include "attention_math.cuh"
#include "attention_plan.h"

namespace fused_rnn::cuda::attention {

constexpr unsigned kFullMask = 0xffffffffu;

// ------------------------------------------------------------------------------------------------
// PTX wrappers (tests/cuda_emulation.h defines them on the host, from the PTX ISA's semantics).
// ------------------------------------------------------------------------------------------------

#if !defined(FUSED_RNN_CUDA_EMULATION)

/// The block's dynamic shared memory, 16-byte aligned.
#define FUSED_RNN_DYNAMIC_SHARED_MEMORY(name) extern __shared__ __align__(16) unsigned char name[]

__device__ __forceinline__ uint32_t shared_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

/// 16 bytes global -> shared, asynchronously; bytes past `valid_bytes` are zero-filled.
__device__ __forceinline__ void copy_async_16(void* shared, const void* global, int valid_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(shared)),
               "l"(global), "r"(valid_bytes));
}

__device__ __forceinline__ void copy_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

/// Waits until at most `kPending` of this thread's most recent copy groups are in flight.
template <int kPending>
__device__ __forceinline__ void copy_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row)));
}

/// c += a (16 x 16, row) . b (16 x 8, col), float accumulators.
template <typename Scalar>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<Scalar, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7},"
        " {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7},"
        " {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

#endif  // !FUSED_RNN_CUDA_EMULATION

/// Two floats rounded to Scalar in one register, `low` in the lower half (the lower column).
template <typename Scalar>
__device__ __forceinline__ uint32_t pack_pair(float low, float high) {
  if constexpr (std::is_same_v<Scalar, __half>) {
    return uint32_t{__half_as_ushort(__float2half_rn(low))} |
           (uint32_t{__half_as_ushort(__float2half_rn(high))} << 16);
  } else {
    return uint32_t{__bfloat16_as_ushort(__float2bfloat16_rn(low))} |
           (uint32_t{__bfloat16_as_ushort(__float2bfloat16_rn(high))} << 16);
  }
}

template <typename T>
__device__ __forceinline__ T quad_max(T x) {
  x = fmax(x, __shfl_xor_sync(kFullMask, x, 1));
  return fmax(x, __shfl_xor_sync(kFullMask, x, 2));
}

template <typename T>
__device__ __forceinline__ T quad_sum(T x) {
  x += __shfl_xor_sync(kFullMask, x, 1);
  return x + __shfl_xor_sync(kFullMask, x, 2);
}

// ------------------------------------------------------------------------------------------------
// Staging.
// ------------------------------------------------------------------------------------------------

/// A batch row's [rows, pitch] row-major matrix in global memory with `row_limit` rows and
/// `col_limit` columns that exist.
template <typename Scalar>
struct GlobalMatrix {
  const Scalar* data;
  int64_t pitch;
  int64_t row_limit;
  int64_t col_limit;
};

/// Rows [row0, row0 + count) and columns [col0, col0 + width) of `m` into the shared tile
/// [count, stride], zeros where the matrix has no element. With `aligned` (16-byte aligned rows
/// and chunks) the block's threads issue 16-byte cp.async copies (the caller commits and waits);
/// otherwise they copy element by element, visible after the next __syncthreads.
template <typename Scalar>
__device__ void stage_tile(Scalar* tile, int stride, const GlobalMatrix<Scalar>& m, int64_t row0, int count,
                           int64_t col0, int width, bool aligned) {
  constexpr int kVector = 16 / sizeof(Scalar);
  const int vectors = width / kVector;
  for (int i = threadIdx.x; i < count * vectors; i += blockDim.x) {
    const int r = i / vectors, c = (i % vectors) * kVector;
    const int64_t row = row0 + r, col = col0 + c;
    Scalar* destination = tile + r * stride + c;
    int64_t live = row < m.row_limit ? m.col_limit - col : 0;
    live = live < 0 ? 0 : (live > kVector ? kVector : live);
    const Scalar* source = m.data + row * m.pitch + col;
    if (aligned) {
      copy_async_16(destination, live > 0 ? source : m.data, static_cast<int>(live * sizeof(Scalar)));
    } else {
      for (int e = 0; e < kVector; ++e) destination[e] = e < live ? source[e] : from_acc<Scalar>(0);
    }
  }
}

/// v[col0, col0 + width) into a shared accumulation-dtype vector, zeros past `limit`.
template <typename Scalar>
__device__ void stage_vector(AccOf<Scalar>* tile, const Scalar* v, int64_t col0, int width, int64_t limit) {
  for (int i = threadIdx.x; i < width; i += blockDim.x) {
    tile[i] = col0 + i < limit ? to_acc(v[col0 + i]) : AccOf<Scalar>(0);
  }
}

/// 16 bytes of shared memory as accumulation-dtype values.
template <typename Scalar>
__device__ __forceinline__ void load_vector(AccOf<Scalar> (&out)[16 / sizeof(Scalar)], const Scalar* p) {
  if constexpr (std::is_same_v<Scalar, float>) {
    const float4 x = *reinterpret_cast<const float4*>(p);
    out[0] = x.x, out[1] = x.y, out[2] = x.z, out[3] = x.w;
  } else if constexpr (std::is_same_v<Scalar, double>) {
    const double2 x = *reinterpret_cast<const double2*>(p);
    out[0] = x.x, out[1] = x.y;
  } else {
    const uint4 x = *reinterpret_cast<const uint4*>(p);
    const uint32_t words[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      Scalar low, high;
      const uint16_t low_bits = static_cast<uint16_t>(words[w]), high_bits = static_cast<uint16_t>(words[w] >> 16);
      if constexpr (std::is_same_v<Scalar, __half>) {
        low = __ushort_as_half(low_bits), high = __ushort_as_half(high_bits);
      } else {
        low = __ushort_as_bfloat16(low_bits), high = __ushort_as_bfloat16(high_bits);
      }
      out[2 * w] = to_acc(low), out[2 * w + 1] = to_acc(high);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Tile products of one warp. `rows` points at the warp's first row of a [*, stride] tile; a
// column tile has kColumns rows; `width` (a multiple of 16) is the reduced or produced size.
// ------------------------------------------------------------------------------------------------

/// s += rows . cols^T on tensor cores.
template <typename Scalar, int kColumns>
__device__ __forceinline__ void mma_scores(float (&s)[kColumns / 8][4], const Scalar* rows, const Scalar* cols,
                                           int stride, int width) {
  const int lane = threadIdx.x % 32;
  for (int k0 = 0; k0 < width; k0 += 16) {
    uint32_t a[4];
    const TileIndex ai = a_fragment_source(lane, k0);
    ldmatrix_x4(a, rows + ai.row * stride + ai.col);
#pragma unroll
    for (int n = 0; n < kColumns / 8; n += 2) {
      uint32_t b[4];
      const TileIndex bi = b_fragment_pair_source(lane, 8 * n, k0);
      ldmatrix_x4(b, cols + bi.row * stride + bi.col);
      mma_16816<Scalar>(s[n], a, b[0], b[1]);
      mma_16816<Scalar>(s[n + 1], a, b[2], b[3]);
    }
  }
}

/// s += rows . cols^T with exact FMAs (float32, float64).
template <typename T, int kColumns>
__device__ __forceinline__ void simt_dot_scores(T (&s)[kColumns / 8][4], const T* rows, const T* cols,
                                                int stride, int width) {
  constexpr int kVector = 16 / sizeof(T);
  const int lane = threadIdx.x % 32, group = lane / 4, thread = lane % 4;
  for (int f = 0; f < width; f += kVector) {
    T q0[kVector], q1[kVector];
    load_vector<T>(q0, rows + group * stride + f);
    load_vector<T>(q1, rows + (group + 8) * stride + f);
#pragma unroll
    for (int n = 0; n < kColumns / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        T k[kVector];
        load_vector<T>(k, cols + (8 * n + 2 * thread + e) * stride + f);
        // Each 16-byte vector's products summed apart, then added: chains of F / kVector
        // additions instead of F, for float32 scores of large D within 1e-5.
        T p0 = q0[0] * k[0], p1 = q1[0] * k[0];
#pragma unroll
        for (int i = 1; i < kVector; ++i) {
          p0 = fma(q0[i], k[i], p0);
          p1 = fma(q1[i], k[i], p1);
        }
        s[n][e] += p0;
        s[n][2 + e] += p1;
      }
    }
  }
}

/// s += v . tanh(rows_i + cols_j) over the features, v [width] in shared memory.
template <typename Scalar, int kColumns>
__device__ __forceinline__ void additive_scores(AccOf<Scalar> (&s)[kColumns / 8][4], const Scalar* rows,
                                                const Scalar* cols, const AccOf<Scalar>* v, int stride,
                                                int width) {
  using Acc = AccOf<Scalar>;
  constexpr int kVector = 16 / sizeof(Scalar);
  constexpr TanhKind kTanh = Numerics<Scalar>::kTanh;
  const int lane = threadIdx.x % 32, group = lane / 4, thread = lane % 4;
  for (int f = 0; f < width; f += kVector) {
    Acc q0[kVector], q1[kVector], w[kVector];
    load_vector<Scalar>(q0, rows + group * stride + f);
    load_vector<Scalar>(q1, rows + (group + 8) * stride + f);
#pragma unroll
    for (int i = 0; i < kVector; ++i) w[i] = v[f + i];
#pragma unroll
    for (int n = 0; n < kColumns / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        Acc k[kVector];
        load_vector<Scalar>(k, cols + (8 * n + 2 * thread + e) * stride + f);
#pragma unroll
        for (int i = 0; i < kVector; ++i) {
          s[n][e] += additive_term<kTanh>(w[i], q0[i], k[i]);
          s[n][2 + e] += additive_term<kTanh>(w[i], q1[i], k[i]);
        }
      }
    }
  }
}

/// The score tile of `score` (additive, or dot on tensor cores or exact FMAs).
template <typename Scalar, AttentionScore kScore, int kColumns>
__device__ __forceinline__ void score_tile(AccOf<Scalar> (&s)[kColumns / 8][4], const Scalar* rows,
                                           const Scalar* cols, const AccOf<Scalar>* v, int stride, int width) {
  if constexpr (kScore == AttentionScore::kAdditive) {
    additive_scores<Scalar, kColumns>(s, rows, cols, v, stride, width);
  } else if constexpr (Numerics<Scalar>::kTensorCores) {
    mma_scores<Scalar, kColumns>(s, rows, cols, stride, width);
  } else {
    simt_dot_scores<Scalar, kColumns>(s, rows, cols, stride, width);
  }
}

/// The dot tile rows . cols^T (dP = grad_context . values^T in the backward, in every score).
template <typename Scalar, int kColumns>
__device__ __forceinline__ void dot_tile(AccOf<Scalar> (&s)[kColumns / 8][4], const Scalar* rows,
                                         const Scalar* cols, int stride, int width) {
  score_tile<Scalar, AttentionScore::kDot, kColumns>(s, rows, cols, nullptr, stride, width);
}

/// o += p . m on tensor cores: p [16, kColumns] in the accumulator layout (rounded to Scalar),
/// m [kColumns, stride] the tile whose rows are p's columns, over output columns [0, width).
template <typename Scalar, int kColumns, int kWidth>
__device__ __forceinline__ void mma_product(float (&o)[kWidth / 8][4], const float (&p)[kColumns / 8][4],
                                            const Scalar* m, int stride, int width) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < kColumns / 16; ++kk) {
    uint32_t a[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const AccumulatorPair pair = a_fragment_from_accumulator(kk, r);
      a[r] = pack_pair<Scalar>(p[pair.tile][pair.element], p[pair.tile][pair.element + 1]);
    }
#pragma unroll
    for (int n = 0; n < kWidth / 8; n += 2) {
      if (8 * n < width) {
        uint32_t b[4];
        const TileIndex bi = b_fragment_pair_source_trans(lane, 16 * kk, 8 * n);
        ldmatrix_x4_trans(b, m + bi.row * stride + bi.col);
        mma_16816<Scalar>(o[n], a, b[0], b[1]);
        mma_16816<Scalar>(o[n + 1], a, b[2], b[3]);
      }
    }
  }
}

/// o += p . m with exact FMAs; each lane takes the p values of its rows from the quad's lanes.
template <typename T, int kColumns, int kWidth>
__device__ __forceinline__ void simt_product(T (&o)[kWidth / 8][4], const T (&p)[kColumns / 8][4], const T* m,
                                             int stride, int width) {
  const int lane = threadIdx.x % 32, quad = lane & ~3, thread = lane % 4;
#pragma unroll
  for (int n = 0; n < kColumns / 8; ++n) {
#pragma unroll 1
    for (int source = 0; source < 4; ++source) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const T p0 = __shfl_sync(kFullMask, p[n][e], quad + source);
        const T p1 = __shfl_sync(kFullMask, p[n][2 + e], quad + source);
        const T* m_row = m + (8 * n + 2 * source + e) * stride + 2 * thread;
#pragma unroll
        for (int on = 0; on < kWidth / 8; ++on) {
          if (8 * on < width) {
            const T m0 = m_row[8 * on], m1 = m_row[8 * on + 1];
            o[on][0] = fma(p0, m0, o[on][0]);
            o[on][1] = fma(p0, m1, o[on][1]);
            o[on][2] = fma(p1, m0, o[on][2]);
            o[on][3] = fma(p1, m1, o[on][3]);
          }
        }
      }
    }
  }
}

/// o += p . m (the context, d_values, and the dot score's d_query and d_keys).
template <typename Scalar, int kColumns, int kWidth>
__device__ __forceinline__ void weighted_rows(AccOf<Scalar> (&o)[kWidth / 8][4],
                                              const AccOf<Scalar> (&p)[kColumns / 8][4], const Scalar* m,
                                              int stride, int width) {
  if constexpr (Numerics<Scalar>::kTensorCores) {
    mma_product<Scalar, kColumns, kWidth>(o, p, m, stride, width);
  } else {
    simt_product<Scalar, kColumns, kWidth>(o, p, m, stride, width);
  }
}

/// The additive score's gradient over one tile, lane l owning features a = 32 k + l:
///   pre[r][k] += sum_c dS[c][r] (1 - h^2),  dv[k] += sum_{c, r} dS[c][r] h,  h = tanh(rows_r,a + cols_c,a)
/// for the warp's 16 rows and the tile's kColumns columns; dS [kColumns, 16] (column-major) in
/// shared memory. pre times v_a is the gradient of the rows' operand (d_pq, or d_pk in the key pass);
/// dv is only accumulated with kWithDv.
template <typename Scalar, int kColumns, int kWidth, bool kWithDv>
__device__ __forceinline__ void additive_gradient(AccOf<Scalar> (&pre)[16][kWidth / 32],
                                                  AccOf<Scalar> (&dv)[kWidth / 32], const AccOf<Scalar>* ds,
                                                  const Scalar* rows, const Scalar* cols, int stride,
                                                  int width) {
  using Acc = AccOf<Scalar>;
  constexpr TanhKind kTanh = Numerics<Scalar>::kTanh;
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int k = 0; k < kWidth / 32; ++k) {
    const int a = 32 * k + lane;
    if (a < width) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {  // eight rows at a time: fewer live registers
        Acc x[8];
#pragma unroll
        for (int r = 0; r < 8; ++r) x[r] = to_acc(rows[(8 * half + r) * stride + a]);
#pragma unroll 1
        for (int c = 0; c < kColumns; ++c) {
          const Acc y = to_acc(cols[c * stride + a]);
#pragma unroll
          for (int r = 0; r < 8; ++r) {
            const AdditiveGradientTerms<Acc> terms =
                additive_gradient_terms<kTanh>(ds[c * 16 + 8 * half + r], x[r], y);
            pre[8 * half + r][k] += terms.pre;
            if constexpr (kWithDv) dv[k] += terms.v;
          }
        }
      }
    }
  }
}

/// Writes the warp's [16, width) accumulator tile (accumulator layout) times `factor` into the
/// [rows, pitch] matrix `out` at (row0 + 16 warp, col0), rows below row_limit, columns below col_limit.
template <typename Out, typename Acc, int kWidth>
__device__ __forceinline__ void store_accumulator(Out* out, int64_t pitch, int64_t row0, int64_t row_limit,
                                                  int64_t col0, int64_t col_limit, int width,
                                                  const Acc (&o)[kWidth / 8][4], Acc factor) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int t = 0; t < kWidth / 8; ++t) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t row = row0 + warp * kAttentionRowsPerWarp + accumulator_row(lane, e);
      const int64_t col = col0 + accumulator_col(lane, t, e);
      if (8 * t < width && row < row_limit && col < col_limit) {
        const Acc value = o[t][e] * factor;
        if constexpr (std::is_same_v<Out, Acc>) {
          out[row * pitch + col] = value;
        } else {
          out[row * pitch + col] = from_acc<Out>(value);
        }
      }
    }
  }
}

}  // namespace fused_rnn::cuda::attention
