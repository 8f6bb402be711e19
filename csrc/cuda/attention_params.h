// Parameters of the CUDA attention kernels: raw device pointers, sizes and the launch geometry, in
// plain C++ (no torch headers), filled by the torch-facing layer (attention_api.cpp) with the help
// of the planner (attention_plan.h) and read by the kernels (attention_forward.cu,
// attention_backward.cu).
//
// Shapes and conventions are those of fused_rnn/reference.py, section "attention": B batch rows,
// Tq queries, Tk keys, F score features (A for the additive score, D for the dot score), Dv value
// size. Every tensor is contiguous and on one device; "storage" tensors have the input dtype, lse,
// delta and the split-K partials the accumulation dtype (float32 for half types, else the input
// dtype). key_lengths (int64, device memory) is null when every key counts, otherwise key j of
// batch row b counts when j < key_lengths[b] (1 <= key_lengths[b] <= Tk).
#pragma once

#include <cstdint>

#include "recurrence_params.h"  // DType

#if defined(__CUDACC__)
#define FUSED_RNN_HOST_DEVICE __host__ __device__
#else
#define FUSED_RNN_HOST_DEVICE
#endif

namespace fused_rnn::cuda {

enum class AttentionScore : int32_t { kAdditive, kDot };

struct AttentionShape {
  int64_t batch;       // B
  int64_t queries;     // Tq
  int64_t keys;        // Tk
  int64_t features;    // F
  int64_t value_size;  // Dv
};

/// How one kernel's work is cut: 16 rows per warp (queries, or keys in the key pass of the
/// backward), columns (keys, or queries) in tiles of the kernel's column block, the F features in
/// `feature_chunks` chunks of `feature_chunk` and the Dv value columns in `value_chunks` chunks of
/// `value_chunk` (both multiples of 16), and the key tiles of a row block in `splits` ranges of
/// `tiles_per_split` tiles (split-K; 1 for the key pass).
struct AttentionTiling {
  int32_t warps;
  int64_t row_blocks;  // per batch row: ceil(rows / (16 * warps))
  int32_t feature_chunk;
  int32_t feature_chunks;
  int32_t value_chunk;
  int32_t value_chunks;
  int32_t splits;
  int64_t tiles_per_split;
  int64_t shared_bytes;  // dynamic shared memory of one block
};

/// context = softmax(mask(scores)) @ values, lse = logsumexp of each row's live scores.
struct AttentionForwardParams {
  DType dtype;
  AttentionScore score;
  AttentionShape shape;
  double scale;                // multiplies the dot score; 1 for the additive score
  bool aligned;                // every row of query, keys and values starts 16-byte aligned
  const void* query;           // [B, Tq, F]: pq (additive) or the (projected) query (dot)
  const void* keys;            // [B, Tk, F]: pk (additive) or keys (dot)
  const void* v;               // [F], additive only
  const void* values;          // [B, Tk, Dv]
  const int64_t* key_lengths;  // [B] or null
  void* context;               // [B, Tq, Dv] out
  void* lse;                   // [B, Tq] out, accumulation dtype
  void* scores;                // [B, Tq, Tk] accumulation dtype (raw scale * score), or null
  void* weights;               // [B, Tq, Tk] out (may be `scores` itself), null unless asked for
  void* split_context;         // [splits, B, Tq, Dv] accumulation dtype, null when splits == 1
  void* split_lse;             // [splits, B, Tq] accumulation dtype, null when splits == 1
};

/// With P = exp(score - lse), dP = grad_context . values_j (+ grad_weights), dS = P (dP - delta):
/// d_query = sum_j dS d score / d query, d_keys = sum_i dS d score / d keys, d_values = P^T grad_context.
struct AttentionBackwardParams {
  DType dtype;
  AttentionScore score;
  AttentionShape shape;
  double scale;
  bool aligned;                // every row of query, keys, values and grad_context is 16-byte aligned
  const void* grad_context;    // [B, Tq, Dv]
  const void* grad_weights;    // [B, Tq, Tk], or null
  const void* query;           // [B, Tq, F]
  const void* keys;            // [B, Tk, F]
  const void* v;               // [F], additive only
  const void* values;          // [B, Tk, Dv]
  const int64_t* key_lengths;  // [B] or null
  const void* lse;             // [B, Tq] accumulation dtype
  const void* delta;           // [B, Tq] accumulation dtype: sum_j P dP of each row
  void* d_query;               // [B, Tq, F] out (input dtype) when the query pass has one split
  void* split_d_query;         // [splits, B, Tq, F] accumulation dtype otherwise (each split's sum)
  void* d_keys;                // [B, Tk, F] out
  void* d_values;              // [B, Tk, Dv] out
  void* d_v_blocks;            // [B, key row blocks, F] accumulation dtype, additive only: each
                               // key block's share of d_v (summed by the caller, in order)
};

}  // namespace fused_rnn::cuda
