// The backward CUDA attention kernels. With P = exp(score - lse) recomputed from the saved
// log-sum-exp, dP = grad_context . values_j (+ grad_weights), dS = P (dP - delta):
//   attention_query_pass_kernel  d_query = sum_j dS d score / d query (one block: 16 * warps query
//                                rows, one split of the key tiles, one chunk of the features)
//   attention_key_pass_kernel    d_keys = sum_i dS d score / d keys and the additive score's d_v
//                                shares (one block: 16 * warps key rows, every query tile, one
//                                chunk of the features)
//   attention_value_pass_kernel  d_values = P^T grad_context (one block: 16 * warps key rows,
//                                every query tile, one chunk of the values)
// Every output element has one writer (split-K partials of d_query and the key blocks' d_v shares
// are summed by the caller in a fixed order): no atomics, deterministic. Each tile's scores are
// computed once by the block that needs them; [B, Tq, Tk] and [B, Tq, Tk, A] are never stored.
//
// Stages, per tile: (1) score: stage the chunks of the score operands and compute S, summing the
// feature chunks in the forward's order; (2) dP: stage the value-sized operands and compute
// grad_context . values^T (query and key passes); (3) P, or dS = P (dP - delta), masked, dS
// rounded to the input dtype as the reference rounds it; (4) gradient: P^T @ grad_context, or for
// dot scores dS @ K (dS^T @ Q) by mma.sync / exact FMAs; the additive score writes dS to shared
// memory and each lane adds, for its features a, dS (1 - tanh^2) over the tile (times v_a at the
// end) and dS tanh for d_v.
//
// Per-tile cost (one warp, a 32-column tile, F = Dv = 256, bf16; estimates from first principles):
//   dot:      query and key passes S, dP and the gradient product: 3 x 64 HMMA.16816; value pass
//             S and P^T @ grad_context: 2 x 64 HMMA.
//   additive: query and key passes 2 x 131,072 tanh (score, then gradient) + 64 HMMA for dP; value
//             pass 131,072 tanh + 64 HMMA (a tanh: one MUFU op in bfloat16, two in float16).
// Estimated H200 time (estimate, not measured; ~1,500 FLOP/clk/SM on 132 SMs at ~1.8 GHz):
//   dot B32 Tq=Tk=512 D=256: 8 products of 4.3 GFLOP = 34 GFLOP -> ~0.1 ms; Tq=Tk=2048: ~1.6 ms.
//   additive bf16 B32 Tq=Tk=512 A=256: 5 sweeps of 2.1 G tanh at ~3.8 T/s -> ~3 ms;
//   Tq=Tk=2048: ~45 ms.
#include <algorithm>

#include "attention_dispatch.cuh"
#include "attention_launch.h"
#include "attention_warp.cuh"

namespace fused_rnn::cuda {
namespace attention {
namespace {

/// The two operands of a chunked tile product: the block's rows [row0, row0 + block_rows) of
/// `rows` and a column tile of `cols`, staged chunk by chunk of `chunk` columns (of `size`).
/// With one chunk the rows stay staged from tile to tile.
template <typename Scalar>
struct ChunkedOperands {
  Scalar* rows_tile;
  Scalar* cols_tile;
  AccOf<Scalar>* v_tile;  // the additive score's v chunk, or null
  const Scalar* v;
  int stride;
  GlobalMatrix<Scalar> rows;
  GlobalMatrix<Scalar> cols;
  int64_t row0;
  int block_rows;
  int chunk;
  int chunks;
  int64_t size;
  bool aligned;
};

/// acc += the score (kScore) of rows . cols^T for the column tile starting at col0, over every
/// chunk in the forward's order (the recomputed scores then match the forward's, and the
/// weights exp(score - lse) sum to one), leaving chunk `keep` of both operands staged for the
/// gradient. Starts with a barrier: the caller's earlier reads of the buffers are done.
template <typename Scalar, AttentionScore kScore, int kColumns>
__device__ void chunked_tile(AccOf<Scalar> (&acc)[kColumns / 8][4], const ChunkedOperands<Scalar>& op,
                             int64_t col0, int keep, bool first_tile) {
  const int warp = threadIdx.x / 32;
  auto stage = [&](int c, bool rows) {
    const int64_t start = int64_t{c} * op.chunk;
    const int width = attention_chunk_width(c, op.chunk, op.size);
    __syncthreads();
    if (rows) {
      stage_tile(op.rows_tile, op.stride, op.rows, op.row0, op.block_rows, start, width, op.aligned);
      if constexpr (kScore == AttentionScore::kAdditive) stage_vector(op.v_tile, op.v, start, width, op.size);
    }
    stage_tile(op.cols_tile, op.stride, op.cols, col0, kColumns, start, width, op.aligned);
    copy_async_commit();
    copy_async_wait<0>();
    __syncthreads();
    return width;
  };
  for (int c = 0; c < op.chunks; ++c) {
    const int width = stage(c, op.chunks > 1 || first_tile);
    score_tile<Scalar, kScore, kColumns>(acc, op.rows_tile + warp * kAttentionRowsPerWarp * op.stride,
                                         op.cols_tile, op.v_tile, op.stride, width);
  }
  if (op.chunks > 1 && keep != op.chunks - 1) stage(keep, true);
}

/// Writes the warp's additive gradient (lane l: features 32 k + l of its 16 rows) times v.
template <typename Scalar, int kWidth>
__device__ void store_additive_gradient(Scalar* out, int64_t pitch, int64_t row0, int64_t row_limit,
                                        int64_t col0, int64_t col_limit, int width, const Scalar* v,
                                        const AccOf<Scalar> (&pre)[16][kWidth / 32]) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k < kWidth / 32; ++k) {
    const int64_t col = col0 + 32 * k + lane;
    if (32 * k + lane >= width || col >= col_limit) continue;
    const AccOf<Scalar> factor = to_acc(v[col]);
#pragma unroll
    for (int r = 0; r < 16; ++r) {
      const int64_t row = row0 + warp * kAttentionRowsPerWarp + r;
      if (row < row_limit) out[row * pitch + col] = from_acc<Scalar>(pre[r][k] * factor);
    }
  }
}

/// The warp's dS tile (accumulator layout) into its shared [kColumns, 16] column-major buffer.
template <typename Acc, int kColumns>
__device__ void share_score_gradients(Acc* ds_tile, const Acc (&ds)[kColumns / 8][4]) {
  const int lane = threadIdx.x % 32;
  __syncwarp();  // the warp's reads of the previous tile are done
#pragma unroll
  for (int t = 0; t < kColumns / 8; ++t) {
#pragma unroll
    for (int e = 0; e < 4; ++e) ds_tile[accumulator_col(lane, t, e) * 16 + accumulator_row(lane, e)] = ds[t][e];
  }
  __syncwarp();
}

// ------------------------------------------------------------------------------------------------
// d_query.
// ------------------------------------------------------------------------------------------------

template <typename Scalar, AttentionScore kScore>
__global__ void __launch_bounds__(kAttentionMaxWarps * 32, kAttentionBlocksPerProcessor)
    attention_query_pass_kernel(const AttentionBackwardParams p, const AttentionTiling tiling) {
  using Acc = AccOf<Scalar>;
  constexpr DType kDType = Numerics<Scalar>::kDType;
  constexpr int kColumns = attention_block_columns(kDType, AttentionPass::kQueries);
  constexpr int kWidth = attention_output_width(kDType);
  constexpr bool kAdditive = kScore == AttentionScore::kAdditive;
  FUSED_RNN_DYNAMIC_SHARED_MEMORY(shared);
  const AttentionSharedLayout layout = attention_shared_layout(AttentionPass::kQueries, kScore, kDType, tiling);

  const AttentionShape n = p.shape;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int block_rows = kAttentionRowsPerWarp * tiling.warps;
  const int64_t b = blockIdx.x / tiling.row_blocks;
  const int64_t row0 = (blockIdx.x % tiling.row_blocks) * block_rows;
  const int64_t length = p.key_lengths == nullptr ? n.keys : p.key_lengths[b];
  const int64_t tile_begin = blockIdx.y * tiling.tiles_per_split;
  const int64_t tile_end = min(tile_begin + tiling.tiles_per_split, attention_ceil_div(length, kColumns));
  const int out_chunk = blockIdx.z;
  const int64_t out0 = int64_t{out_chunk} * tiling.feature_chunk;
  const int out_width = attention_chunk_width(out_chunk, tiling.feature_chunk, n.features);

  const ChunkedOperands<Scalar> scores{
      reinterpret_cast<Scalar*>(shared + layout.rows), reinterpret_cast<Scalar*>(shared + layout.cols),
      kAdditive ? reinterpret_cast<Acc*>(shared + layout.v) : nullptr, static_cast<const Scalar*>(p.v),
      layout.feature_stride,
      {static_cast<const Scalar*>(p.query) + b * n.queries * n.features, n.features, n.queries, n.features},
      {static_cast<const Scalar*>(p.keys) + b * n.keys * n.features, n.features, n.keys, n.features},
      row0, block_rows, tiling.feature_chunk, tiling.feature_chunks, n.features, p.aligned};
  const ChunkedOperands<Scalar> products{
      reinterpret_cast<Scalar*>(shared + layout.value_rows), reinterpret_cast<Scalar*>(shared + layout.value_cols),
      nullptr, nullptr, layout.value_stride,
      {static_cast<const Scalar*>(p.grad_context) + b * n.queries * n.value_size, n.value_size, n.queries,
       n.value_size},
      {static_cast<const Scalar*>(p.values) + b * n.keys * n.value_size, n.value_size, n.keys, n.value_size},
      row0, block_rows, tiling.value_chunk, tiling.value_chunks, n.value_size, p.aligned};

  // Each lane's two rows: lse (base 2) and delta; rows past Tq get P = 0.
  Acc lse2[2], delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = row0 + warp * kAttentionRowsPerWarp + accumulator_row(lane, 2 * r);
    const bool real = row < n.queries;
    lse2[r] = real ? static_cast<const Acc*>(p.lse)[b * n.queries + row] * Acc(kLog2e)
                   : infinity<Acc>();
    delta[r] = real ? static_cast<const Acc*>(p.delta)[b * n.queries + row] : Acc(0);
  }
  const Acc scale2 = static_cast<Acc>(p.scale * kLog2e);

  Acc dq[kAdditive ? 1 : kWidth / 8][4] = {};      // dot: d_query chunk, accumulator layout
  Acc pre[kAdditive ? 16 : 1][kWidth / 32] = {};  // additive: lane l holds features 32 k + l
  Acc unused_dv[kWidth / 32] = {};
  Acc* ds_tile = kAdditive ? reinterpret_cast<Acc*>(shared + layout.score_grads) + warp * kColumns * 16 : nullptr;

  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    const int64_t key0 = tile * kColumns;
    const bool first = tile == tile_begin;
    Acc s[kColumns / 8][4] = {}, dp[kColumns / 8][4] = {};
    chunked_tile<Scalar, kScore, kColumns>(s, scores, key0, out_chunk, first);                       // 1.
    chunked_tile<Scalar, AttentionScore::kDot, kColumns>(dp, products, key0, tiling.value_chunks - 1, first);  // 2.
#pragma unroll
    for (int t = 0; t < kColumns / 8; ++t) {  // 3.
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t row = row0 + warp * kAttentionRowsPerWarp + accumulator_row(lane, e);
        const int64_t key = key0 + accumulator_col(lane, t, e);
        const bool live = key_is_live(key, length) && row < n.queries;
        const Acc weight = recomputed_weight(s[t][e] * scale2, lse2[e / 2], live);
        Acc d_weight = dp[t][e];
        if (p.grad_weights != nullptr && live) {
          d_weight += to_acc(static_cast<const Scalar*>(p.grad_weights)[(b * n.queries + row) * n.keys + key]);
        }
        s[t][e] = score_gradient<Scalar>(weight, d_weight, delta[e / 2]);
      }
    }
    if constexpr (kAdditive) {  // 4.
      share_score_gradients<Acc, kColumns>(ds_tile, s);
      additive_gradient<Scalar, kColumns, kWidth, false>(pre, unused_dv, ds_tile,
                                                  scores.rows_tile + warp * kAttentionRowsPerWarp * scores.stride,
                                                  scores.cols_tile, scores.stride, out_width);
    } else {
      weighted_rows<Scalar, kColumns, kWidth>(dq, s, scores.cols_tile, scores.stride, out_width);
    }
  }

  const Acc scale = static_cast<Acc>(p.scale);
  if (tiling.splits == 1) {
    Scalar* d_query = static_cast<Scalar*>(p.d_query) + b * n.queries * n.features;
    if constexpr (kAdditive) {
      store_additive_gradient<Scalar, kWidth>(d_query, n.features, row0, n.queries, out0, n.features, out_width,
                                              static_cast<const Scalar*>(p.v), pre);
    } else {
      store_accumulator<Scalar, Acc, kWidth>(d_query, n.features, row0, n.queries, out0, n.features, out_width,
                                             dq, scale);
    }
    return;
  }
  Acc* split = static_cast<Acc*>(p.split_d_query) + (blockIdx.y * n.batch + b) * n.queries * n.features;
  if constexpr (kAdditive) {  // the split's sum before the factor v (the caller multiplies)
#pragma unroll
    for (int k = 0; k < kWidth / 32; ++k) {
      const int64_t col = out0 + 32 * k + lane;
      if (32 * k + lane >= out_width || col >= n.features) continue;
#pragma unroll
      for (int r = 0; r < 16; ++r) {
        const int64_t row = row0 + warp * kAttentionRowsPerWarp + r;
        if (row < n.queries) split[row * n.features + col] = pre[r][k];
      }
    }
  } else {
    store_accumulator<Acc, Acc, kWidth>(split, n.features, row0, n.queries, out0, n.features, out_width, dq, scale);
  }
}

// ------------------------------------------------------------------------------------------------
// d_keys (and d_v), d_values: rows are keys, columns queries.
// ------------------------------------------------------------------------------------------------

/// What the key and value passes share: the block's keys and the column tile loop's operands.
template <typename Scalar, AttentionScore kScore, AttentionPass kPass>
struct KeyRows {
  using Acc = AccOf<Scalar>;
  static constexpr DType kDType = Numerics<Scalar>::kDType;
  static constexpr int kColumns = attention_block_columns(kDType, kPass);

  AttentionShape n;
  AttentionSharedLayout layout;
  int64_t b, key_block, row0, length;
  int out_chunk;
  int64_t out0;
  int out_width;
  int64_t query_tiles;  // 0 when every key of the block is at or past the length: zero gradients
  ChunkedOperands<Scalar> scores;  // rows: keys, columns: queries
  GlobalMatrix<Scalar> grad_context;
  Acc* column_lse2;
  Acc* column_delta;

  __device__ KeyRows(const AttentionBackwardParams& p, const AttentionTiling& tiling, unsigned char* shared,
                     int out_chunk_size, int64_t out_size)
      : n(p.shape), layout(attention_shared_layout(kPass, kScore, kDType, tiling)) {
    const int block_rows = kAttentionRowsPerWarp * tiling.warps;
    b = blockIdx.x / tiling.row_blocks;
    key_block = blockIdx.x % tiling.row_blocks;
    row0 = key_block * block_rows;
    length = p.key_lengths == nullptr ? n.keys : p.key_lengths[b];
    out_chunk = blockIdx.z;
    out0 = int64_t{out_chunk} * out_chunk_size;
    out_width = attention_chunk_width(out_chunk, out_chunk_size, out_size);
    query_tiles = row0 < length ? attention_ceil_div(n.queries, kColumns) : 0;
    scores = {reinterpret_cast<Scalar*>(shared + layout.rows), reinterpret_cast<Scalar*>(shared + layout.cols),
              kScore == AttentionScore::kAdditive ? reinterpret_cast<Acc*>(shared + layout.v) : nullptr,
              static_cast<const Scalar*>(p.v), layout.feature_stride,
              {static_cast<const Scalar*>(p.keys) + b * n.keys * n.features, n.features, n.keys, n.features},
              {static_cast<const Scalar*>(p.query) + b * n.queries * n.features, n.features, n.queries, n.features},
              row0, block_rows, tiling.feature_chunk, tiling.feature_chunks, n.features, p.aligned};
    grad_context = {static_cast<const Scalar*>(p.grad_context) + b * n.queries * n.value_size, n.value_size,
                    n.queries, n.value_size};
    column_lse2 = reinterpret_cast<Acc*>(shared + layout.column_stats);
    column_delta = column_lse2 + kColumns;
  }

  /// The query columns' lse (base 2; +inf past Tq, so that P = 0) and delta, for the tile at
  /// query0 (visible after the caller's next barrier).
  __device__ void stage_column_stats(const AttentionBackwardParams& p, int64_t query0) const {
    for (int c = threadIdx.x; c < kColumns; c += blockDim.x) {
      const int64_t query = query0 + c;
      const bool real = query < n.queries;
      column_lse2[c] = real ? static_cast<const Acc*>(p.lse)[b * n.queries + query] * Acc(kLog2e)
                            : infinity<Acc>();
      column_delta[c] = real ? static_cast<const Acc*>(p.delta)[b * n.queries + query] : Acc(0);
    }
  }

  /// P^T for the warp's tile s^T of raw scores, in place: 0 for keys past the length.
  __device__ void weights(Acc (&s)[kColumns / 8][4], Acc scale2, int64_t query0) const {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
    for (int t = 0; t < kColumns / 8; ++t) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t key = row0 + warp * kAttentionRowsPerWarp + accumulator_row(lane, e);
        const int col = accumulator_col(lane, t, e);
        const bool live = key_is_live(key, length) && query0 + col < n.queries;
        s[t][e] = recomputed_weight(s[t][e] * scale2, column_lse2[col], live);
      }
    }
  }
};

template <typename Scalar, AttentionScore kScore>
__global__ void __launch_bounds__(kAttentionMaxWarps * 32, kAttentionBlocksPerProcessor)
    attention_value_pass_kernel(const AttentionBackwardParams p, const AttentionTiling tiling) {
  using Acc = AccOf<Scalar>;
  using Rows = KeyRows<Scalar, kScore, AttentionPass::kValues>;
  constexpr int kColumns = Rows::kColumns;
  constexpr int kWidth = attention_output_width(Rows::kDType);
  FUSED_RNN_DYNAMIC_SHARED_MEMORY(shared);
  const Rows rows(p, tiling, shared, tiling.value_chunk, p.shape.value_size);
  Scalar* grad_context_tile = reinterpret_cast<Scalar*>(shared + rows.layout.value_cols);
  const Acc scale2 = static_cast<Acc>(p.scale * kLog2e);

  Acc o[kWidth / 8][4] = {};
  for (int64_t tile = 0; tile < rows.query_tiles; ++tile) {
    const int64_t query0 = tile * kColumns;
    Acc s[kColumns / 8][4] = {};
    chunked_tile<Scalar, kScore, kColumns>(s, rows.scores, query0, tiling.feature_chunks - 1, tile == 0);
    rows.stage_column_stats(p, query0);
    stage_tile(grad_context_tile, rows.layout.value_stride, rows.grad_context, query0, kColumns, rows.out0,
               rows.out_width, p.aligned);
    copy_async_commit();
    copy_async_wait<0>();
    __syncthreads();
    rows.weights(s, scale2, query0);
    weighted_rows<Scalar, kColumns, kWidth>(o, s, grad_context_tile, rows.layout.value_stride, rows.out_width);
  }
  const AttentionShape n = p.shape;
  store_accumulator<Scalar, Acc, kWidth>(static_cast<Scalar*>(p.d_values) + rows.b * n.keys * n.value_size,
                                         n.value_size, rows.row0, n.keys, rows.out0, n.value_size, rows.out_width, o,
                                         Acc(1));
}

template <typename Scalar, AttentionScore kScore>
__global__ void __launch_bounds__(kAttentionMaxWarps * 32, kAttentionBlocksPerProcessor)
    attention_key_pass_kernel(const AttentionBackwardParams p, const AttentionTiling tiling) {
  using Acc = AccOf<Scalar>;
  using Rows = KeyRows<Scalar, kScore, AttentionPass::kKeys>;
  constexpr int kColumns = Rows::kColumns;
  constexpr int kWidth = attention_output_width(Rows::kDType);
  constexpr bool kAdditive = kScore == AttentionScore::kAdditive;
  FUSED_RNN_DYNAMIC_SHARED_MEMORY(shared);
  const Rows rows(p, tiling, shared, tiling.feature_chunk, p.shape.features);
  const AttentionShape n = p.shape;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const ChunkedOperands<Scalar> products{
      reinterpret_cast<Scalar*>(shared + rows.layout.value_rows),
      reinterpret_cast<Scalar*>(shared + rows.layout.value_cols), nullptr, nullptr, rows.layout.value_stride,
      {static_cast<const Scalar*>(p.values) + rows.b * n.keys * n.value_size, n.value_size, n.keys, n.value_size},
      rows.grad_context, rows.row0, kAttentionRowsPerWarp * tiling.warps, tiling.value_chunk, tiling.value_chunks,
      n.value_size, p.aligned};
  Acc* ds_tile = kAdditive ? reinterpret_cast<Acc*>(shared + rows.layout.score_grads) + warp * kColumns * 16 : nullptr;
  const Acc scale2 = static_cast<Acc>(p.scale * kLog2e);

  Acc o[kAdditive ? 1 : kWidth / 8][4] = {};      // dot: d_keys chunk, accumulator layout
  Acc pre[kAdditive ? 16 : 1][kWidth / 32] = {};  // additive d_keys: lane l holds features 32 k + l
  Acc dv[kWidth / 32] = {};                       // additive: the d_v share of the same features

  for (int64_t tile = 0; tile < rows.query_tiles; ++tile) {
    const int64_t query0 = tile * kColumns;
    Acc s[kColumns / 8][4] = {}, dp[kColumns / 8][4] = {};
    chunked_tile<Scalar, kScore, kColumns>(s, rows.scores, query0, rows.out_chunk, tile == 0);  // 1.
    rows.stage_column_stats(p, query0);
    chunked_tile<Scalar, AttentionScore::kDot, kColumns>(dp, products, query0, tiling.value_chunks - 1,
                                                         tile == 0);  // 2.
    rows.weights(s, scale2, query0);
#pragma unroll
    for (int t = 0; t < kColumns / 8; ++t) {  // 3. dS^T
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t key = rows.row0 + warp * kAttentionRowsPerWarp + accumulator_row(lane, e);
        const int col = accumulator_col(lane, t, e);
        const int64_t query = query0 + col;
        Acc d_weight = dp[t][e];
        if (p.grad_weights != nullptr && key_is_live(key, rows.length) && query < n.queries) {
          d_weight += to_acc(static_cast<const Scalar*>(p.grad_weights)[(rows.b * n.queries + query) * n.keys + key]);
        }
        s[t][e] = score_gradient<Scalar>(s[t][e], d_weight, rows.column_delta[col]);
      }
    }
    if constexpr (kAdditive) {  // 4.
      share_score_gradients<Acc, kColumns>(ds_tile, s);
      additive_gradient<Scalar, kColumns, kWidth, true>(
          pre, dv, ds_tile, rows.scores.rows_tile + warp * kAttentionRowsPerWarp * rows.scores.stride,
          rows.scores.cols_tile, rows.scores.stride, rows.out_width);
    } else {
      weighted_rows<Scalar, kColumns, kWidth>(o, s, rows.scores.cols_tile, rows.scores.stride, rows.out_width);
    }
  }

  Scalar* d_keys = static_cast<Scalar*>(p.d_keys) + rows.b * n.keys * n.features;
  if constexpr (!kAdditive) {
    store_accumulator<Scalar, Acc, kWidth>(d_keys, n.features, rows.row0, n.keys, rows.out0, n.features,
                                           rows.out_width, o, static_cast<Acc>(p.scale));
  } else {
    store_additive_gradient<Scalar, kWidth>(d_keys, n.features, rows.row0, n.keys, rows.out0, n.features,
                                            rows.out_width, static_cast<const Scalar*>(p.v), pre);
    // The block's d_v share: the warps' sums added in warp order.
    Acc* shares = reinterpret_cast<Acc*>(shared + rows.layout.score_grads);  // [warps, out_width]
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kWidth / 32; ++k) {
      if (32 * k + lane < rows.out_width) shares[warp * rows.out_width + 32 * k + lane] = dv[k];
    }
    __syncthreads();
    Acc* d_v = static_cast<Acc*>(p.d_v_blocks) + (rows.b * tiling.row_blocks + rows.key_block) * n.features;
    for (int a = threadIdx.x; a < rows.out_width; a += blockDim.x) {
      Acc sum = 0;
      for (int w = 0; w < tiling.warps; ++w) sum += shares[w * rows.out_width + a];
      if (rows.out0 + a < n.features) d_v[rows.out0 + a] = sum;
    }
  }
}

}  // namespace
}  // namespace attention

cudaError_t launch_attention_backward(const AttentionBackwardParams& p, const AttentionBackwardTilings& tilings,
                                      cudaStream_t stream) {
  using namespace attention;
  return dispatch_attention(p.dtype, p.score, [&](auto scalar, auto score) {
    using Scalar = decltype(scalar);
    constexpr AttentionScore kScore = decltype(score)::value;
    cudaError_t status =
        launch_tiled(attention_query_pass_kernel<Scalar, kScore>, AttentionPass::kQueries, p, tilings.queries, stream);
    if (status == cudaSuccess) {
      status = launch_tiled(attention_key_pass_kernel<Scalar, kScore>, AttentionPass::kKeys, p, tilings.keys, stream);
    }
    if (status == cudaSuccess) {
      status =
          launch_tiled(attention_value_pass_kernel<Scalar, kScore>, AttentionPass::kValues, p, tilings.values, stream);
    }
    return status;
  });
}

}  // namespace fused_rnn::cuda
