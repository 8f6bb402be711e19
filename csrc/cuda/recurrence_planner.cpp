#include "recurrence_planner.h"

#include <algorithm>
#include <cmath>

namespace fused_rnn::cuda {
namespace {

// ---- The cost model's constants: estimates for an H100 SXM, none of them measured here. ----
constexpr double kClockGHz = 1.755;             // boost clock
constexpr double kGridBarrierUs = 1.0;          // cooperative_groups grid.sync() across ~132 blocks
constexpr double kStepLaunchUs = 4.0;           // one kernel launch per step (fallback mode)
constexpr double kL2LatencyUs = 0.6;            // first bytes of a dependent read from L2
constexpr double kL2BytesPerUs = 5.5e6;         // aggregate L2 -> SM bandwidth, 5.5 TB/s
constexpr double kSmL2BytesPerClock = 64.0;     // one SM's share of it
constexpr double kSmSharedBytesPerClock = 128.0;
constexpr double kMmaFmaPerClock[] = {1024.0, 1024.0, 512.0};  // per SM, mma.sync bf16/f16/tf32
constexpr double kFmaPerClock[] = {128.0 * 0.5, 64.0 * 0.5};   // per SM, FFMA/DFMA, half issue
constexpr double kMmaLatencyClocks = 33.0;      // dependent mma.sync on one accumulator
constexpr double kGroupOverheadUs = 0.15;       // two __syncthreads, partial sums, pointwise math
constexpr double kPairUs = 0.05;                // per (unit, row) pair a thread handles

constexpr int kPartialPadding = 8;
constexpr int64_t kExchangeAlignment = 32;  // elements: a multiple of every k-step

bool is_mma(Math math) { return math == Math::kBf16Mma || math == Math::kF16Mma || math == Math::kTf32Mma; }

int32_t align(int64_t bytes, int64_t to) { return static_cast<int32_t>(round_up(bytes, to)); }

/// The register entries are tight: the smallest capacity (of the same math and m-tiles) that holds
/// a warp's k-steps is the only one accepted.
bool is_tightest(const EngineConfig& config, Direction direction, int64_t k_steps_per_warp) {
  if (config.regime != Regime::kRegisters) {
    return true;
  }
  for (int i = 0; i < engine_count(direction); ++i) {
    const EngineConfig& other = engines(direction)[i];
    if (other.regime == Regime::kRegisters && other.math == config.math &&
        other.m_tiles == config.m_tiles && other.k_steps >= k_steps_per_warp &&
        other.k_steps < config.k_steps) {
      return false;
    }
  }
  return true;
}

/// The geometry of one candidate, or false when it does not fit the device or the engine.
bool make_geometry(const ProblemShape& problem, const EngineConfig& config, int warps_m,
                   int64_t units, int64_t batch_per_block, const DeviceDescription& device,
                   int max_chunk_steps, RecurrenceGeometry& g) {
  const bool forward = problem.direction == Direction::kForward;
  const int gates = gate_count(problem.cell);
  const int ob = operand_bytes(config.math);
  const int ab = accumulator_bytes(config.math);
  g = RecurrenceGeometry{};
  g.steps = 0;
  g.batch = problem.batch;
  g.hidden = problem.hidden;
  g.state = problem.state;
  g.gates = gates;
  g.rows_per_unit = forward ? gates : 1;
  g.k = forward ? problem.state : gates * problem.hidden;
  g.k_pad = round_up(g.k, kExchangeAlignment);
  g.k_steps = static_cast<int32_t>(ceil_div(g.k, k_per_step(config.math)));

  g.warps_m = warps_m;
  g.warps_k = kWarps / warps_m;
  g.m_tiles = config.m_tiles;
  g.rows_per_block = 16 * config.m_tiles * warps_m;
  const int32_t whole = static_cast<int32_t>(ceil_div(g.k_steps, g.warps_k));  // one chunk
  if (config.regime == Regime::kRegisters && whole > config.k_steps) {
    return false;
  }
  if (units * g.rows_per_unit > g.rows_per_block || units > kMaxUnitsPerBlock) {
    return false;
  }

  g.units_per_block = static_cast<int32_t>(units);
  g.unit_slices = static_cast<int32_t>(ceil_div(problem.hidden, units));
  g.batch_per_block = static_cast<int32_t>(batch_per_block);
  g.batch_slices = static_cast<int32_t>(ceil_div(problem.batch, batch_per_block));
  g.blocks = g.unit_slices * g.batch_slices;
  g.batch_pad = int64_t{g.batch_slices} * batch_per_block;

  g.carries = problem.cell == CellKind::kLstm ? 2 : 1;
  g.fragment_bytes = fragment_elements(config.math) * ob;
  g.partial_row_stride = kGroupColumns + kPartialPadding;
  const int64_t partials = int64_t{g.warps_k} * g.rows_per_block * g.partial_row_stride * ab;
  const int64_t carries = int64_t{g.carries} * units * batch_per_block * ab;
  const int64_t limit = std::min<int64_t>(device.shared_per_block_optin,
                                          device.shared_per_sm - device.shared_reserved_per_block);
  const int groups = static_cast<int>(batch_per_block / kGroupColumns);
  // The largest chunk (one, if the engine holds its fragments in registers) whose pipeline fits,
  // with as many stages as there are (group, chunk) buffers to fill, up to kMaxStages.
  const int32_t largest = max_chunk_steps > 0 ? std::min(whole, max_chunk_steps) : whole;
  for (int32_t chunk_steps = largest; chunk_steps >= 1; chunk_steps = chunk_steps == 1 ? 0 : (chunk_steps + 1) / 2) {
    g.k_steps_per_chunk = chunk_steps;
    g.k_chunks = static_cast<int32_t>(ceil_div(g.k_steps, int64_t{g.warps_k} * chunk_steps));
    if (config.regime == Regime::kRegisters && g.k_chunks > 1) {
      return false;
    }
    g.k_steps_per_warp = g.k_chunks * chunk_steps;
    g.fragments_per_slice = int64_t{g.warps_m} * g.warps_k * g.m_tiles * g.k_steps_per_warp;
    g.chunk_elements = static_cast<int32_t>(
        std::min<int64_t>(int64_t{g.warps_k} * chunk_steps * k_per_step(config.math), g.k_pad));
    g.slab_row_bytes = align(int64_t{g.chunk_elements} * ob, 128) + 32;
    const int64_t weights = config.regime == Regime::kShared ? g.fragments_per_slice * g.fragment_bytes : 0;
    const int64_t slab = int64_t{kGroupColumns} * g.slab_row_bytes;
    const int buffers = std::min<int64_t>(kMaxStages, int64_t{groups} * g.k_chunks);
    for (int stages = buffers; stages >= 1; --stages) {
      const int64_t slabs_offset = align(weights, 128);
      const int64_t partials_offset = align(slabs_offset + stages * slab, 128);
      const int64_t carries_offset = align(partials_offset + partials, 128);
      const int64_t total = align(carries_offset + carries, 128);
      if (total <= limit) {
        g.stages = stages;
        g.weights_offset = 0;
        g.slabs_offset = static_cast<int32_t>(slabs_offset);
        g.partials_offset = static_cast<int32_t>(partials_offset);
        g.carries_offset = static_cast<int32_t>(carries_offset);
        g.shared_bytes = static_cast<int32_t>(total);
        return true;
      }
    }
  }
  return false;
}

}  // namespace

DeviceDescription h100_description() {
  return DeviceDescription{132, 65536, 233472, 232448, 1024, 2048, 32, 255, 50LL << 20, 9, 0};
}

DeviceDescription h200_description() {
  DeviceDescription device = h100_description();
  device.l2_bytes = 60LL << 20;
  return device;
}

Math math_for(DType dtype, bool allow_tf32) {
  switch (dtype) {
    case DType::kBFloat16: return Math::kBf16Mma;
    case DType::kFloat16: return Math::kF16Mma;
    case DType::kFloat32: return allow_tf32 ? Math::kTf32Mma : Math::kF32Fma;
    case DType::kFloat64: return Math::kF64Fma;
  }
  return Math::kF64Fma;
}

double estimate_step_us(const RecurrencePlan& plan, const DeviceDescription& device) {
  const RecurrenceGeometry& g = plan.geometry;
  const Math math = plan.config.math;
  const int ob = operand_bytes(math);
  const double clock_us = 1.0 / (kClockGHz * 1e3);  // one clock, in microseconds
  const int64_t groups = g.batch_per_block / kGroupColumns;
  const int64_t live_columns = std::min<int64_t>(g.batch, g.batch_per_block);
  const int64_t n_tiles = ceil_div(live_columns, 8);

  // Bytes a block reads from L2 per step: its columns of h (or of the gate gradients), and the
  // weight slice once per group in the global regime.
  const double slice_bytes = static_cast<double>(g.fragments_per_slice) * g.fragment_bytes;
  double block_bytes = static_cast<double>(g.batch_per_block) * g.k_pad * ob;
  if (plan.config.regime == Regime::kGlobal) {
    block_bytes += slice_bytes * groups;
  }
  const double total_bytes = block_bytes * std::min(g.blocks, device.sm_count);
  const double l2_us = kL2LatencyUs * ceil_div(groups * g.k_chunks, g.stages) +
                       std::max(block_bytes / kSmL2BytesPerClock * clock_us, total_bytes / kL2BytesPerUs);

  // The product: tensor-core rate or FMA rate, at least the latency of one warp's accumulator chain.
  const double fma = static_cast<double>(g.rows_per_block) * g.k_steps * k_per_step(math) * 8.0 *
                     n_tiles;
  double compute_clocks = 0;
  if (is_mma(math)) {
    compute_clocks = std::max(fma / kMmaFmaPerClock[static_cast<int>(math)],
                              g.k_steps_per_warp * kMmaLatencyClocks * groups);
  } else {
    compute_clocks = fma / kFmaPerClock[math == Math::kF64Fma ? 1 : 0];
  }
  if (plan.config.regime == Regime::kShared) {
    compute_clocks += slice_bytes * groups / kSmSharedBytesPerClock;
  }
  const double pairs = std::ceil(static_cast<double>(g.units_per_block) * kGroupColumns / kThreads);
  const double pointwise_us = groups * (kGroupOverheadUs + pairs * kPairUs);
  const double sync_us = plan.persistent ? kGridBarrierUs : kStepLaunchUs;
  return sync_us + l2_us + compute_clocks * clock_us + pointwise_us;
}

bool plan_candidate(const ProblemShape& problem, int engine, int warps_m, int64_t units, int64_t batch_per_block,
                    const DeviceDescription& device, RecurrencePlan& plan, int max_chunk_steps) {
  const EngineConfig& config = engines(problem.direction)[engine];
  plan = RecurrencePlan{engine, config, {}, false, 0.0};
  if (config.math != problem.math ||
      !make_geometry(problem, config, warps_m, units, batch_per_block, device, max_chunk_steps, plan.geometry) ||
      !is_tightest(config, problem.direction, plan.geometry.k_steps_per_warp)) {
    return false;
  }
  plan.persistent = plan.geometry.blocks <= device.sm_count;
  plan.estimated_step_us = estimate_step_us(plan, device);
  return true;
}

RecurrencePlan plan_recurrence(const ProblemShape& problem, const DeviceDescription& device, const Regime* only) {
  RecurrencePlan best{};
  bool found = false;
  const int count = engine_count(problem.direction);
  const int64_t batch_groups = ceil_div(problem.batch, kGroupColumns);
  for (int index = 0; index < count; ++index) {
    const EngineConfig& config = engines(problem.direction)[index];
    if (config.math != problem.math || (only != nullptr && config.regime != *only)) {
      continue;
    }
    for (int warps_m = 1; warps_m <= kWarps; warps_m *= 2) {
      const int64_t max_units = std::min<int64_t>(
          {16 * config.m_tiles * warps_m /
               (problem.direction == Direction::kForward ? gate_count(problem.cell) : 1),
           kMaxUnitsPerBlock, problem.hidden});
      for (int64_t units = 1; units <= max_units; ++units) {
        // Only the smallest unit count of each slice count (the others pad more rows).
        const int64_t slices = ceil_div(problem.hidden, units);
        if (ceil_div(problem.hidden, slices) != units) {
          continue;
        }
        for (int64_t groups_per_block = 1; groups_per_block <= batch_groups; ++groups_per_block) {
          if (ceil_div(batch_groups, ceil_div(batch_groups, groups_per_block)) != groups_per_block) {
            continue;  // the same batch slices as a smaller block
          }
          RecurrencePlan candidate;
          if (!plan_candidate(problem, index, warps_m, units, groups_per_block * kGroupColumns, device,
                              candidate)) {
            continue;
          }
          const bool better = !found || (candidate.persistent && !best.persistent) ||
                              (candidate.persistent == best.persistent &&
                               candidate.estimated_step_us < best.estimated_step_us);
          if (better) {
            best = candidate;
            found = true;
          }
        }
      }
    }
  }
  return found || only == nullptr ? best : plan_recurrence(problem, device);
}

WorkspaceLayout workspace_layout(const RecurrencePlan& plan, bool projected) {
  const RecurrenceGeometry& g = plan.geometry;
  const int ob = operand_bytes(plan.config.math);
  const int ab = accumulator_bytes(plan.config.math);
  WorkspaceLayout layout{};
  int64_t offset = 0;
  auto take = [&offset](int64_t bytes) {
    const int64_t at = offset;
    offset = round_up(offset + bytes, 256);
    return at;
  };
  layout.weights_offset = take(int64_t{g.unit_slices} * g.fragments_per_slice * g.fragment_bytes);
  layout.ring_rows = g.batch_pad;
  layout.ring_row_elements = g.k_pad;
  layout.ring_slot_elements = g.batch_pad * g.k_pad;
  layout.ring_offset = take(2 * layout.ring_slot_elements * ob);
  layout.carries_offset = take(int64_t{g.carries} * g.batch * g.hidden * ab);
  layout.projection_offset = take(projected ? g.batch * g.hidden * ab : 0);
  layout.bytes = offset;
  return layout;
}

}  // namespace fused_rnn::cuda
