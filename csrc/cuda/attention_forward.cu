// The forward CUDA attention kernels: context = softmax(mask(scores)) @ values and the
// log-sum-exp of every query row, FlashAttention-style, for the additive and the dot score.
//
// Stages of attention_forward_kernel (one block: 16 * warps query rows of one batch row, one
// split of the key tiles, one chunk of the value columns):
//   1. stage   the query rows (once when the features fit one chunk) and the next key tile into
//              shared memory with cp.async, the value tile behind them;
//   2. score   the [16, 64] score tile of each warp: dot scores by mma.sync m16n8k16 (half types)
//              or exact FMAs (float32, float64); additive scores v . tanh(pq_i + pk_j) feature by
//              feature (tanh per attention_math.cuh's TanhKind), so that [B, Tq, Tk, A] never exists;
//   3. softmax mask keys at or past the row's length, move each row's running maximum, rescale
//              the partial context and sum; the raw scores go to `scores` when weights are asked for;
//   4. context add P @ V (mma.sync for half types, P from registers as the A operand);
//   5. finish  divide by the sum, store the context and lse (or the split's partials).
// combine_splits_kernel merges the split-K partials (decoder steps and other short query blocks),
// normalize_weights_kernel turns the raw scores into weights once every row's lse is known.
//
// Per-tile cost (one warp, one 64-key tile, F = Dv = 256, bf16; estimates from first principles):
//   dot:      S and P @ V: 2 x 16 x 64 x 256 MACs = 128 HMMA.16816 each (256 in all); ldmatrix
//             traffic ~72 KB (the key and value tiles, 32 KB each, read by every warp).
//   additive: 16 x 64 x 256 = 262,144 tanh + 2 FP32 ops each, + 128 HMMA for P @ V; a tanh is one
//             MUFU op in bfloat16 (tanh.approx), two in float16 (ex2 and rcp).
// Estimated H200 time (132 SMs at ~1.8 GHz; estimate, not measured):
//   dot B32 Tq=Tk=512 D=256: 8.6 GFLOP; the warps' ldmatrix reads bound the SM at ~1,800
//     FLOP/clk (128 B/clk of shared memory x ~14.6 FLOP/B) -> ~20-25 us; Tq=Tk=2048: ~0.35 ms.
//   dot decoder step B32 Tk=4096: 134 MB of keys and values at ~4 TB/s -> ~35-45 us (split-K
//     fills the device: 8 splits x 32 rows).
//   additive bf16 B32 Tq=Tk=512 A=256: 2.1 G tanh at 16 MUFU/clk/SM (~3.8 T/s) -> ~0.6 ms;
//     Tq=Tk=2048: ~9 ms (float16 twice that). The eager formula moves ~4 x 4.3 GB at Tq=Tk=512
//     (~4-5 ms) and needs ~69 GB per [B, Tq, Tk, A] bf16 tensor at 2048.
#include <algorithm>

#include "attention_dispatch.cuh"
#include "attention_launch.h"
#include "attention_warp.cuh"

namespace fused_rnn::cuda {
namespace attention {
namespace {

template <typename Scalar, AttentionScore kScore>
__global__ void __launch_bounds__(kAttentionMaxWarps * 32, kAttentionBlocksPerProcessor)
    attention_forward_kernel(const AttentionForwardParams p, const AttentionTiling tiling) {
  using Acc = AccOf<Scalar>;
  constexpr DType kDType = Numerics<Scalar>::kDType;
  constexpr int kColumns = attention_block_columns(kDType, AttentionPass::kForward);
  constexpr int kWidth = attention_output_width(kDType);
  FUSED_RNN_DYNAMIC_SHARED_MEMORY(shared);
  const AttentionSharedLayout layout = attention_shared_layout(AttentionPass::kForward, kScore, kDType, tiling);
  Scalar* rows_tile = reinterpret_cast<Scalar*>(shared + layout.rows);
  Scalar* cols_tile = reinterpret_cast<Scalar*>(shared + layout.cols);
  Scalar* values_tile = reinterpret_cast<Scalar*>(shared + layout.value_cols);
  Acc* v_tile = kScore == AttentionScore::kAdditive ? reinterpret_cast<Acc*>(shared + layout.v) : nullptr;
  const int fs = layout.feature_stride, vs = layout.value_stride;

  const AttentionShape n = p.shape;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int block_rows = kAttentionRowsPerWarp * tiling.warps;
  const int64_t b = blockIdx.x / tiling.row_blocks;
  const int64_t row0 = (blockIdx.x % tiling.row_blocks) * block_rows;
  const int64_t length = p.key_lengths == nullptr ? n.keys : p.key_lengths[b];
  const int64_t tile_begin = blockIdx.y * tiling.tiles_per_split;
  const int64_t live_tiles = attention_ceil_div(length, kColumns);
  const int64_t tile_end = min(tile_begin + tiling.tiles_per_split, live_tiles);
  const int64_t value0 = int64_t{blockIdx.z} * tiling.value_chunk;
  const int value_width = attention_chunk_width(blockIdx.z, tiling.value_chunk, n.value_size);
  const bool rows_resident = tiling.feature_chunks == 1;

  const GlobalMatrix<Scalar> query{static_cast<const Scalar*>(p.query) + b * n.queries * n.features,
                                   n.features, n.queries, n.features};
  const GlobalMatrix<Scalar> keys{static_cast<const Scalar*>(p.keys) + b * n.keys * n.features,
                                  n.features, n.keys, n.features};
  const GlobalMatrix<Scalar> values{static_cast<const Scalar*>(p.values) + b * n.keys * n.value_size,
                                    n.value_size, n.keys, n.value_size};
  auto stage_rows = [&](int c) {
    const int width = attention_chunk_width(c, tiling.feature_chunk, n.features);
    stage_tile(rows_tile, fs, query, row0, block_rows, int64_t{c} * tiling.feature_chunk, width, p.aligned);
    if constexpr (kScore == AttentionScore::kAdditive) {
      stage_vector(v_tile, static_cast<const Scalar*>(p.v), int64_t{c} * tiling.feature_chunk, width, n.features);
    }
  };
  auto stage_cols = [&](int64_t tile, int c) {
    stage_tile(cols_tile, fs, keys, tile * kColumns, kColumns, int64_t{c} * tiling.feature_chunk,
               attention_chunk_width(c, tiling.feature_chunk, n.features), p.aligned);
  };

  // 1. The first tile's first chunk (with the query rows).
  if (tile_begin < tile_end) {
    stage_rows(0);
    stage_cols(tile_begin, 0);
  }
  copy_async_commit();

  Acc o[kWidth / 8][4] = {};
  SoftmaxRow<Acc> state[2] = {softmax_row_start<Acc>(), softmax_row_start<Acc>()};
  const Acc scale2 = static_cast<Acc>(p.scale * kLog2e);
  const Acc scale = static_cast<Acc>(p.scale);
  const Scalar* warp_rows = rows_tile + warp * kAttentionRowsPerWarp * fs;

  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    const int64_t key0 = tile * kColumns;
    stage_tile(values_tile, vs, values, key0, kColumns, value0, value_width, p.aligned);
    copy_async_commit();

    // 2. Scores, chunk by chunk of the features.
    Acc s[kColumns / 8][4] = {};
    for (int c = 0; c < tiling.feature_chunks; ++c) {
      if (c == 0) {
        copy_async_wait<1>();  // all but the value tile
      } else {
        if (!rows_resident) stage_rows(c);
        stage_cols(tile, c);
        copy_async_commit();
        copy_async_wait<0>();
      }
      __syncthreads();
      score_tile<Scalar, kScore, kColumns>(s, warp_rows, cols_tile, v_tile, fs,
                                           attention_chunk_width(c, tiling.feature_chunk, n.features));
      __syncthreads();
    }
    if (tile + 1 < tile_end) {  // the next tile's first chunk, behind this tile's context
      if (!rows_resident) stage_rows(0);
      stage_cols(tile + 1, 0);
    }
    copy_async_commit();

    // 3. Mask, raw scores, online softmax.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t row = row0 + warp * kAttentionRowsPerWarp + accumulator_row(lane, 2 * r);
      Acc tile_max = minus_infinity<Acc>();
#pragma unroll
      for (int t = 0; t < kColumns / 8; ++t) {
#pragma unroll
        for (int e = 2 * r; e < 2 * r + 2; ++e) {
          const int64_t key = key0 + accumulator_col(lane, t, e);
          const bool live = key_is_live(key, length);
          if (live && p.scores != nullptr && blockIdx.z == 0 && row < n.queries) {
            static_cast<Acc*>(p.scores)[(b * n.queries + row) * n.keys + key] = s[t][e] * scale;
          }
          s[t][e] = live ? s[t][e] * scale2 : minus_infinity<Acc>();
          tile_max = fmax(tile_max, s[t][e]);
        }
      }
      const Acc factor = softmax_row_rescale(state[r], quad_max(tile_max));
#pragma unroll
      for (int t = 0; t < kWidth / 8; ++t) {
        o[t][2 * r] *= factor;
        o[t][2 * r + 1] *= factor;
      }
#pragma unroll
      for (int t = 0; t < kColumns / 8; ++t) {
#pragma unroll
        for (int e = 2 * r; e < 2 * r + 2; ++e) {
          s[t][e] = softmax_term(s[t][e], state[r].max2);
          state[r].sum += s[t][e];
        }
      }
    }

    // 4. Context.
    copy_async_wait<1>();  // the value tile (the next key tile may still be in flight)
    __syncthreads();
    weighted_rows<Scalar, kColumns, kWidth>(o, s, values_tile, vs, value_width);
    __syncthreads();
  }

  // 5. Finish: the context divided by each row's sum, lse; the split's partials with split-K.
  const int64_t rows_total = n.batch * n.queries;
  const int64_t split_row0 = tiling.splits == 1 ? b * n.queries : blockIdx.y * rows_total + b * n.queries;
  Acc* lse_out = static_cast<Acc*>(tiling.splits == 1 ? p.lse : p.split_lse) + split_row0;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    state[r].sum = quad_sum(state[r].sum);
    const Acc inverse = state[r].sum > Acc(0) ? Acc(1) / state[r].sum : Acc(0);
#pragma unroll
    for (int t = 0; t < kWidth / 8; ++t) {
      o[t][2 * r] *= inverse;
      o[t][2 * r + 1] *= inverse;
    }
    const int64_t row = row0 + warp * kAttentionRowsPerWarp + accumulator_row(lane, 2 * r);
    if (row < n.queries && blockIdx.z == 0 && lane % 4 == 0) lse_out[row] = softmax_row_lse(state[r]);
  }
  if (tiling.splits == 1) {
    store_accumulator<Scalar, Acc, kWidth>(static_cast<Scalar*>(p.context) + split_row0 * n.value_size, n.value_size,
                                           row0, n.queries, value0, n.value_size, value_width, o, Acc(1));
  } else {
    store_accumulator<Acc, Acc, kWidth>(static_cast<Acc*>(p.split_context) + split_row0 * n.value_size, n.value_size,
                                        row0, n.queries, value0, n.value_size, value_width, o, Acc(1));
  }
}

/// One block per query row: lse = logsumexp of the splits' lse, context = their shares' sum.
template <typename Scalar>
__global__ void combine_splits_kernel(const AttentionForwardParams p, int32_t splits) {
  using Acc = AccOf<Scalar>;
  const int64_t rows = p.shape.batch * p.shape.queries, row = blockIdx.x;
  const Acc* split_lse = static_cast<const Acc*>(p.split_lse) + row;
  const Acc* split_context = static_cast<const Acc*>(p.split_context) + row * p.shape.value_size;
  const Acc lse = combined_lse(split_lse, splits, rows);
  for (int64_t col = threadIdx.x; col < p.shape.value_size; col += blockDim.x) {
    Acc sum = 0;
    for (int32_t s = 0; s < splits; ++s) {
      sum += split_share(split_lse[s * rows], lse) * split_context[s * rows * p.shape.value_size + col];
    }
    static_cast<Scalar*>(p.context)[row * p.shape.value_size + col] = from_acc<Scalar>(sum);
  }
  if (threadIdx.x == 0) static_cast<Acc*>(p.lse)[row] = lse;
}

/// weights = exp(score - lse) for live keys, 0 past each row's length (grid-stride over B Tq Tk).
template <typename Scalar>
__global__ void normalize_weights_kernel(const AttentionForwardParams p) {
  using Acc = AccOf<Scalar>;
  const AttentionShape n = p.shape;
  const int64_t total = n.batch * n.queries * n.keys;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t row = i / n.keys, key = i % n.keys, b = row / n.queries;
    const int64_t length = p.key_lengths == nullptr ? n.keys : p.key_lengths[b];
    Acc weight = 0;
    if (key_is_live(key, length)) {
      weight = exp2_of((static_cast<const Acc*>(p.scores)[i] - static_cast<const Acc*>(p.lse)[row]) * Acc(kLog2e));
    }
    static_cast<Scalar*>(p.weights)[i] = from_acc<Scalar>(weight);
  }
}

}  // namespace
}  // namespace attention

cudaError_t launch_attention_forward(const AttentionForwardParams& p, const AttentionTiling& tiling,
                                     cudaStream_t stream) {
  using namespace attention;
  return dispatch_attention(p.dtype, p.score, [&](auto scalar, auto score) {
    using Scalar = decltype(scalar);
    cudaError_t status = launch_tiled(attention_forward_kernel<Scalar, decltype(score)::value>,
                                      AttentionPass::kForward, p, tiling, stream);
    const int64_t rows = p.shape.batch * p.shape.queries;
    if (status == cudaSuccess && tiling.splits > 1) {
      status = launch_kernel(combine_splits_kernel<Scalar>, dim3(static_cast<unsigned>(rows)), dim3(128), 0,
                             stream, p, tiling.splits);
    }
    if (status == cudaSuccess && p.weights != nullptr) {
      const int64_t blocks = std::min<int64_t>(attention_ceil_div(rows * p.shape.keys, 256), 65536);
      status = launch_kernel(normalize_weights_kernel<Scalar>, dim3(static_cast<unsigned>(blocks)), dim3(256),
                             0, stream, p);
    }
    return status;
  });
}

cudaError_t attention_device_limits(int device, AttentionDeviceLimits* limits) {
  int processors = 0, shared = 0;
  cudaError_t status = cudaDeviceGetAttribute(&processors, cudaDevAttrMultiProcessorCount, device);
  if (status == cudaSuccess) {
    status = cudaDeviceGetAttribute(&shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  }
  *limits = {processors, shared};
  return status;
}

}  // namespace fused_rnn::cuda
