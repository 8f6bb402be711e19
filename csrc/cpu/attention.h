// Attention scoring on the CPU: scores -> mask by key lengths -> softmax -> weighted sum of values,
// and its backward, for the additive score v . tanh(pq_i + pk_j) and the dot score scale q_i . k_j.
//
// The kernels take accumulation-dtype memory only (float for bfloat16/float16 inputs, else the
// input dtype); attention.cpp converts at the boundary. `dtype` (the input dtype) only decides the
// rounding the reference applies: weights rounded before they multiply the values' gradient and
// score gradients rounded before their GEMMs (see fused_rnn/reference.py, section "attention").
// The forward's context alone uses unrounded weights: the online softmax never holds the final
// weights of a row before it has seen all its keys.
//
// Memory: neither direction stores [B, Tq, Tk, A] nor [B, Tq, Tk]. The forward walks the keys of
// one query row in chunks with an online softmax; the backward recomputes each score from the
// saved log-sum-exp, once in a sweep over query rows (d_query) and once in a sweep over key rows
// (d_keys, d_values, d_v, one task per chunk of keys), so that every output element has exactly one
// writer: no atomics, and results do not depend on the thread count. Besides their outputs they
// keep, for more than a few queries (transposes_keys), a transposed copy of the keys (dot score)
// and, in the backward, of the values: [B, F, Tk] and [B, Dv, Tk], the size of those inputs, which
// the caller allocates (transposed_key_stride).
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace fused_rnn::cpu {

enum class AttentionScore { kAdditive, kDot };

/// Keys scored together before one online-softmax update (a multiple of every vector size).
constexpr int64_t kAttentionKeyChunk = 64;

/// The row length of a transposed copy of keys or values, [B, width, stride]: Tk rounded up to
/// whole key chunks.
inline int64_t transposed_key_stride(int64_t keys) {
  return (keys + kAttentionKeyChunk - 1) / kAttentionKeyChunk * kAttentionKeyChunk;
}

/// B batch rows, Tq queries, Tk keys, F score features (A for additive, D for dot), Dv value size.
struct AttentionShape {
  int64_t batch;
  int64_t queries;
  int64_t keys;
  int64_t features;
  int64_t value_size;
  const int64_t* key_lengths;  // [B] in [1, Tk], or null: every key counts

  int64_t length(int64_t b) const { return key_lengths == nullptr ? keys : key_lengths[b]; }
};

/// Whether the kernels copy keys (dot score) and values transposed: for more than 8 query rows a
/// batch row. Fewer (a decoder step's one) multiply each key row too few times to pay for the copy
/// and take their products by pairs: measured at B64 Tk60 D128, B8 Tk256 D64 and B32 Tk200
/// D256 (2 threads, dot score), by pairs against transposed forward 31-227 against 121-1128 us at
/// Tq = 1 and 44-452 against 58-1214 at Tq = 8, forward+backward about even at Tq = 8 but for
/// D256 (1.9 against 4.1 ms).
/// The caller decides, by allocating the scratch (attention.cpp); the kernels transpose exactly
/// where they are given it.
inline bool transposes_keys(const AttentionShape& shape) { return shape.queries > 8; }

/// Every pointer is accumulation-dtype memory, contiguous.
struct AttentionForward {
  c10::ScalarType dtype;
  AttentionScore score;
  AttentionShape shape;
  double scale;        // dot score only
  const void* query;   // [B, Tq, F]: pq (additive) or query (dot)
  const void* keys;    // [B, Tk, F]: pk (additive) or keys (dot)
  const void* v;       // [F], additive only
  const void* values;  // [B, Tk, Dv]
  void* context;       // [B, Tq, Dv], out
  void* lse;           // [B, Tq], out
  void* weights;       // [B, Tq, Tk], out; null when not asked for
  void* keys_across;   // [B, F, transposed_key_stride(Tk)], scratch where transposes_keys (dot), else null
};

struct AttentionBackward {
  c10::ScalarType dtype;
  AttentionScore score;
  AttentionShape shape;
  double scale;
  const void* grad_context;  // [B, Tq, Dv]
  const void* grad_weights;  // [B, Tq, Tk], or null
  const void* query;         // [B, Tq, F]
  const void* keys;          // [B, Tk, F]
  const void* v;             // [F], additive only
  const void* values;        // [B, Tk, Dv]
  const void* context;       // [B, Tq, Dv]
  const void* lse;           // [B, Tq]
  const void* weights;       // [B, Tq, Tk], or null (exactly when grad_weights is)
  void* d_query;             // [B, Tq, F], out
  void* d_keys;              // [B, Tk, F], out
  void* d_v_rows;            // [B, Tk, F], out, additive only: each key row's share of d_v
  void* d_values;            // [B, Tk, Dv], out
  void* keys_across;         // [B, F, transposed_key_stride(Tk)], scratch where transposes_keys (dot), else null
  void* values_across;       // [B, Dv, transposed_key_stride(Tk)], scratch where transposes_keys, else null
};

struct AttentionKernels {
  const char* capability;
  void (*forward)(const AttentionForward&);
  void (*backward)(const AttentionBackward&);
};

/// The kernels for this CPU: those of ATen's CPU capability (which honours ATEN_CPU_CAPABILITY),
/// AVX512, AVX2 or portable.
const AttentionKernels& attention_kernels();

namespace DEFAULT {
extern const AttentionKernels attention;
}
namespace AVX2 {
extern const AttentionKernels attention;
}
namespace AVX512 {
extern const AttentionKernels attention;
}

}  // namespace fused_rnn::cpu
