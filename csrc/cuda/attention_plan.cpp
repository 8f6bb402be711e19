// The launch planner of the CUDA attention kernels (see attention_plan.h).
#include "attention_plan.h"

#include <algorithm>

namespace fused_rnn::cuda {

namespace {

int64_t round_up(int64_t a, int64_t multiple) { return attention_ceil_div(a, multiple) * multiple; }

/// The width (a multiple of 16) of `count` equal chunks covering `size` padded to 16.
int32_t equal_chunk_width(int64_t size, int32_t count) {
  const int64_t padded = round_up(std::max<int64_t>(size, 1), kAttentionChunkMultiple);
  return static_cast<int32_t>(round_up(attention_ceil_div(padded, count), kAttentionChunkMultiple));
}

int32_t chunk_count(int64_t size, int32_t max_width) {
  const int64_t padded = round_up(std::max<int64_t>(size, 1), kAttentionChunkMultiple);
  return static_cast<int32_t>(attention_ceil_div(padded, max_width));
}

}  // namespace

AttentionTiling plan_attention(AttentionPass pass, AttentionScore score, DType dtype,
                               const AttentionShape& shape, const AttentionDeviceLimits& limits) {
  const bool key_rows = pass == AttentionPass::kKeys || pass == AttentionPass::kValues;
  const int64_t rows = key_rows ? shape.keys : shape.queries;
  const int32_t width = attention_output_width(dtype);
  AttentionTiling t{};
  t.warps = static_cast<int32_t>(
      std::clamp<int64_t>(attention_ceil_div(rows, kAttentionRowsPerWarp), 1, kAttentionMaxWarps));
  t.feature_chunks = chunk_count(shape.features, width);
  t.value_chunks = chunk_count(shape.value_size, width);
  // Shrink until a block fits: fewer warps first (each only costs reuse of the column tiles),
  // then more feature chunks, then more value chunks (each recomputes the scores).
  for (;;) {
    t.feature_chunk = equal_chunk_width(shape.features, t.feature_chunks);
    t.value_chunk = equal_chunk_width(shape.value_size, t.value_chunks);
    t.shared_bytes = attention_shared_layout(pass, score, dtype, t).bytes;
    if (t.shared_bytes <= limits.shared_bytes) break;
    if (t.warps > 1) {
      --t.warps;
    } else if (t.feature_chunk > kAttentionChunkMultiple) {
      ++t.feature_chunks;
    } else if (t.value_chunk > kAttentionChunkMultiple) {
      ++t.value_chunks;
    } else {
      break;  // the smallest block; the caller reports that it does not fit
    }
  }
  t.row_blocks = attention_ceil_div(rows, int64_t{kAttentionRowsPerWarp} * t.warps);
  const int64_t columns = key_rows ? shape.queries : shape.keys;
  const int64_t column_tiles = attention_ceil_div(columns, attention_block_columns(dtype, pass));
  t.splits = 1;
  t.tiles_per_split = column_tiles;
  if (!key_rows && column_tiles > 1) {
    const int64_t output_chunks = pass == AttentionPass::kForward ? t.value_chunks : t.feature_chunks;
    const int64_t blocks = std::max<int64_t>(1, shape.batch * t.row_blocks * output_chunks);
    const int64_t processors = std::max(limits.processors, 1);
    if (blocks < processors) {  // fewer blocks than multiprocessors: split the keys up to two waves
      const int64_t splits = std::min(column_tiles, attention_ceil_div(2 * processors, blocks));
      t.tiles_per_split = attention_ceil_div(column_tiles, splits);
      t.splits = static_cast<int32_t>(attention_ceil_div(column_tiles, t.tiles_per_split));
    }
  }
  return t;
}

AttentionGrid attention_grid(AttentionPass pass, const AttentionShape& shape, const AttentionTiling& tiling) {
  const bool features = pass == AttentionPass::kQueries || pass == AttentionPass::kKeys;
  return {shape.batch * tiling.row_blocks, tiling.splits, features ? tiling.feature_chunks : tiling.value_chunks};
}

}  // namespace fused_rnn::cuda
