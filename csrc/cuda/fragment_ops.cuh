// Device-side fragment operations of the recurrent product, per Math (layouts: fragment_layout.h):
// load a warp's A fragment (packed weights, from shared or global memory), load a B fragment from
// a pipeline buffer in shared memory, and multiply-accumulate one 16 x 8 tile.
//
// A pipeline buffer ("slab") holds kGroupColumns batch rows of h (or of the gate gradients), each
// `row_bytes` long, k contiguous; column n of an n-tile is slab row n.
#pragma once

#include <cstdint>
#include <type_traits>

#include "fragment_layout.h"

namespace fused_rnn::cuda {

template <Math M>
struct FragmentOps;

/// The tensor-core fragments: A is 4 registers a lane, packed in lane order (16 bytes a lane);
/// B is 2 registers.
struct MmaRegisters {
  struct A {
    uint32_t r[4];
  };
  struct B {
    uint32_t r[2];
  };

  /// The lane's registers of the packed fragment at `fragment` (global: read-only cached load).
  static __device__ __forceinline__ A load_a(const void* fragment, int lane, bool global) {
    const uint4* at = static_cast<const uint4*>(fragment) + lane;
    const uint4 v = global ? __ldg(at) : *at;
    return {{v.x, v.y, v.z, v.w}};
  }
};

/// m16n8k16 with bf16 or f16 operands, float32 accumulation.
template <Math M>
struct HalfMmaOps : MmaRegisters {
  using Operand = typename MathTypes<M>::Operand;

  /// The 4 contiguous k values of one slab row (b_element_position).
  static __device__ __forceinline__ B load_b(const unsigned char* slab, int row_bytes, int64_t k0, int lane) {
    const BPosition at = b_element_position<M>(lane, 0);
    const uint2 v = *reinterpret_cast<const uint2*>(slab + at.column * row_bytes + (k0 + at.k) * sizeof(Operand));
    return {{v.x, v.y}};
  }

  static __device__ __forceinline__ void mma(float (&c)[4], const A& a, const B& b) {
    if constexpr (M == Math::kBf16Mma) {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
          "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(a.r[0]), "r"(a.r[1]), "r"(a.r[2]), "r"(a.r[3]), "r"(b.r[0]), "r"(b.r[1]));
    } else {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
          "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(a.r[0]), "r"(a.r[1]), "r"(a.r[2]), "r"(a.r[3]), "r"(b.r[0]), "r"(b.r[1]));
    }
  }
};

template <>
struct FragmentOps<Math::kBf16Mma> : HalfMmaOps<Math::kBf16Mma> {};
template <>
struct FragmentOps<Math::kF16Mma> : HalfMmaOps<Math::kF16Mma> {};

/// m16n8k8 with tf32 operands (float32 storage, rounded when written), float32 accumulation.
template <>
struct FragmentOps<Math::kTf32Mma> : MmaRegisters {
  using Operand = float;

  /// The 2 contiguous k values of one slab row (b_element_position).
  static __device__ __forceinline__ B load_b(const unsigned char* slab, int row_bytes, int64_t k0, int lane) {
    const BPosition at = b_element_position<Math::kTf32Mma>(lane, 0);
    const uint2 v = *reinterpret_cast<const uint2*>(slab + at.column * row_bytes + (k0 + at.k) * sizeof(float));
    return {{v.x, v.y}};
  }

  static __device__ __forceinline__ void mma(float (&c)[4], const A& a, const B& b) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a.r[0]), "r"(a.r[1]), "r"(a.r[2]), "r"(a.r[3]), "r"(b.r[0]), "r"(b.r[1]));
  }
};

/// Exact fused multiply-adds on a 16 x 8 tile with k = 4: lane (g, q) computes rows g, g+8 and
/// columns 2q, 2q+1 (the accumulator layout of the MMAs), k in order.
template <typename T>
struct FmaOps {
  using Operand = T;
  using Vector = typename std::conditional<sizeof(T) == 4, float4, double2>::type;
  static constexpr int kVectorsPerRow = 4 * sizeof(T) / sizeof(Vector);  // 1 (float), 2 (double)
  struct A {
    T v[8];  // rows g, g+8; k 0..3
  };
  struct B {
    T v[8];  // columns 2q, 2q+1; k 0..3
  };

  static __device__ __forceinline__ void load_row(T* out, const Vector* at, bool global) {
#pragma unroll
    for (int i = 0; i < kVectorsPerRow; ++i) {
      const Vector v = global ? __ldg(at + i) : at[i];
      memcpy(out + i * (sizeof(Vector) / sizeof(T)), &v, sizeof(Vector));
    }
  }

  static __device__ __forceinline__ A load_a(const T* fragment, int lane, bool global) {
    A a;
    const int g = lane >> 2;
    load_row(a.v, reinterpret_cast<const Vector*>(fragment + 4 * g), global);
    load_row(a.v + 4, reinterpret_cast<const Vector*>(fragment + 4 * (g + 8)), global);
    return a;
  }

  /// Columns 2q and 2q + 1, k0 .. k0 + 3 (b_element_position).
  static __device__ __forceinline__ B load_b(const unsigned char* slab, int row_bytes, int64_t k0, int lane) {
    B b;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const BPosition at = b_element_position<Math::kF32Fma>(lane, 4 * half);
      load_row(b.v + 4 * half, reinterpret_cast<const Vector*>(slab + at.column * row_bytes + (k0 + at.k) * sizeof(T)),
               false);
    }
    return b;
  }

  static __device__ __forceinline__ void mma(T (&c)[4], const A& a, const B& b) {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      c[0] = fma(a.v[k], b.v[k], c[0]);
      c[1] = fma(a.v[k], b.v[4 + k], c[1]);
      c[2] = fma(a.v[4 + k], b.v[k], c[2]);
      c[3] = fma(a.v[4 + k], b.v[4 + k], c[3]);
    }
  }
};

template <>
struct FragmentOps<Math::kF32Fma> : FmaOps<float> {};
template <>
struct FragmentOps<Math::kF64Fma> : FmaOps<double> {};

// ---- Asynchronous copies and prefetches. ----

/// 16 bytes global -> shared, cached in L2 only (another block wrote them: L1 may be stale).
__device__ __forceinline__ void copy_async_16(void* shared_destination, const void* global_source) {
  const uint32_t destination = static_cast<uint32_t>(__cvta_generic_to_shared(shared_destination));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(destination), "l"(global_source)
               : "memory");
}

__device__ __forceinline__ void commit_copies() { asm volatile("cp.async.commit_group;" ::: "memory"); }

/// Waits until at most `pending` of this thread's committed copy groups are still in flight.
__device__ __forceinline__ void wait_copies(int pending) {
  switch (pending) {
    case 0: asm volatile("cp.async.wait_group 0;" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 3;" ::: "memory"); break;
  }
}

}  // namespace fused_rnn::cuda
