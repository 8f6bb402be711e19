// The launch planner of the CUDA attention kernels, in plain C++: the tile constants the kernels
// are compiled with, the layout of a block's dynamic shared memory (shared with the kernels, which
// carve their buffers out of it with the same function), and the choice of warps, chunks and
// split-K ranges for a shape on a device.
//
// A block gives each warp 16 rows (queries in the forward and query passes, keys in the key pass)
// and walks the columns (keys, or queries in the key pass) in tiles of
// attention_block_columns(dtype). The feature size F and the value size Dv are padded to multiples
// of 16 and staged in chunks of at most attention_output_width(dtype) columns: the accumulators of
// the outputs (context, d_query, d_keys, d_values) hold one chunk of columns per warp in registers,
// and the grid has one block per chunk of output columns.
#pragma once

#include <cstdint>

#include "attention_params.h"

namespace fused_rnn::cuda {

constexpr int32_t kAttentionRowsPerWarp = 16;
constexpr int32_t kAttentionMaxWarps = 4;
constexpr int32_t kAttentionChunkMultiple = 16;  // the mma k step; also keeps staged rows aligned
// The kernels are compiled for two resident blocks of kAttentionMaxWarps warps per multiprocessor
// (at most 256 registers per thread), so that one block stages its tiles while the other computes.
constexpr int32_t kAttentionBlocksPerProcessor = 2;

FUSED_RNN_HOST_DEVICE constexpr int32_t attention_element_bytes(DType dtype) {
  return dtype == DType::kFloat64 ? 8 : dtype == DType::kFloat32 ? 4 : 2;
}

FUSED_RNN_HOST_DEVICE constexpr int32_t attention_accumulator_bytes(DType dtype) {
  return dtype == DType::kFloat64 ? 8 : 4;
}

FUSED_RNN_HOST_DEVICE constexpr int64_t attention_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/// Width of chunk `c` of `chunk` columns, over `size` columns padded to a multiple of 16 (the last
/// chunk may be narrower).
FUSED_RNN_HOST_DEVICE constexpr int32_t attention_chunk_width(int32_t c, int32_t chunk, int64_t size) {
  const int64_t padded = attention_ceil_div(size, kAttentionChunkMultiple) * kAttentionChunkMultiple;
  const int64_t rest = padded - int64_t{c} * chunk;
  return static_cast<int32_t>(rest < chunk ? rest : chunk);
}

/// The four kernels with a tile loop.
enum class AttentionPass : int32_t {
  kForward,  // context and lse: rows queries, columns keys
  kQueries,  // backward, d_query: rows queries, columns keys
  kKeys,     // backward, d_keys (and the additive score's d_v): rows keys, columns queries
  kValues,   // backward, d_values: rows keys, columns queries
};

/// Columns of one score tile: the backward passes hold two score-shaped tiles (S and dP) beside
/// their output accumulator, so their tiles are half as wide.
FUSED_RNN_HOST_DEVICE constexpr int32_t attention_block_columns(DType dtype, AttentionPass pass) {
  return (dtype == DType::kFloat64 ? 32 : 64) / (pass == AttentionPass::kForward ? 1 : 2);
}

/// Most output columns one block accumulates (one chunk): 256 for the half types (D = Dv = 256
/// in one chunk, the judged sizes), fewer for float32 and float64, whose exact-FMA tiles need more
/// registers per element (a float32 block at 256 would spill).
FUSED_RNN_HOST_DEVICE constexpr int32_t attention_output_width(DType dtype) {
  return dtype == DType::kFloat64 ? 32 : dtype == DType::kFloat32 ? 128 : 256;
}

/// Byte offsets of the buffers in a block's dynamic shared memory (-1: absent) and its size.
///   rows         [16 warps, feature_stride]  the rows' score operand (query / pq; keys in kKeys)
///   cols         [block columns, feature_stride]  the columns' score operand
///   value_rows   [16 warps, value_stride]    grad_context (kQueries) or values (kKeys) rows
///   value_cols   [block columns, value_stride]  values (kForward, kQueries) or grad_context
///                (kKeys, kValues)
///   v            [feature_chunk] accumulation dtype, additive only
///   column_stats [2, block columns] accumulation dtype, kKeys and kValues: lse and delta of the
///                query columns
///   score_grads  [warps, block columns, 16] accumulation dtype, additive backward: each warp's
///                dS tile, column-major; kKeys also reduces d_v across warps in it
/// A staged row is its chunk plus 16 bytes of padding, so that the rows that one ldmatrix or one
/// 16-byte load of a warp reads fall in different shared-memory banks.
struct AttentionSharedLayout {
  int32_t feature_stride;  // elements
  int32_t value_stride;    // elements
  int64_t rows, cols, value_rows, value_cols, v, column_stats, score_grads;
  int64_t bytes;
};

FUSED_RNN_HOST_DEVICE inline AttentionSharedLayout attention_shared_layout(
    AttentionPass pass, AttentionScore score, DType dtype, const AttentionTiling& tiling) {
  const int64_t element = attention_element_bytes(dtype), acc = attention_accumulator_bytes(dtype);
  const int64_t rows = int64_t{kAttentionRowsPerWarp} * tiling.warps;
  const int64_t columns = attention_block_columns(dtype, pass);
  const bool additive = score == AttentionScore::kAdditive;
  const bool column_rows = pass == AttentionPass::kKeys || pass == AttentionPass::kValues;
  const bool gradient_rows = pass == AttentionPass::kQueries || pass == AttentionPass::kKeys;
  AttentionSharedLayout layout{};
  layout.feature_stride = tiling.feature_chunk + static_cast<int32_t>(16 / element);
  layout.value_stride = tiling.value_chunk + static_cast<int32_t>(16 / element);
  int64_t end = 0;
  auto carve = [&end](int64_t bytes) {
    const int64_t offset = end;
    end += (bytes + 15) / 16 * 16;
    return offset;
  };
  layout.rows = carve(rows * layout.feature_stride * element);
  layout.cols = carve(columns * layout.feature_stride * element);
  layout.value_rows = gradient_rows ? carve(rows * layout.value_stride * element) : -1;
  layout.value_cols = carve(columns * layout.value_stride * element);
  layout.v = additive ? carve(tiling.feature_chunk * acc) : -1;
  layout.column_stats = column_rows ? carve(2 * columns * acc) : -1;
  layout.score_grads = additive && gradient_rows ? carve(tiling.warps * columns * 16 * acc) : -1;
  layout.bytes = end;
  return layout;
}

/// What the planner needs to know of the device.
struct AttentionDeviceLimits {
  int32_t processors;    // streaming multiprocessors
  int64_t shared_bytes;  // dynamic shared memory one block may opt in to
};

/// The tiling of `pass` for `shape` in `dtype` on a device with `limits`: at most four warps
/// (fewer when there are fewer rows, or when the shared memory would not fit), the features and
/// values in as few chunks as the registers and shared memory allow, and (forward and query pass)
/// the key tiles split when the grid has fewer blocks than the device has multiprocessors (decoder
/// steps, short query blocks), into enough ranges for two blocks per multiprocessor.
AttentionTiling plan_attention(AttentionPass pass, AttentionScore score, DType dtype,
                               const AttentionShape& shape, const AttentionDeviceLimits& limits);

/// Blocks in the grid of `pass`: x = batch rows times row blocks, y = splits, z = output chunks
/// (value chunks in the forward and the value pass, feature chunks in the query and key passes).
struct AttentionGrid {
  int64_t x;
  int32_t y;
  int32_t z;
};

AttentionGrid attention_grid(AttentionPass pass, const AttentionShape& shape, const AttentionTiling& tiling);

}  // namespace fused_rnn::cuda
