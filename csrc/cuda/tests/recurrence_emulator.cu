// A host program that runs the CUDA recurrence's own building blocks on the CPU, for the host tests
// (tests/test_cuda_host.py):
//
//   recurrence_emulator check        self-checks of the fragment layouts and the packing (prints
//                                    "ok" or the first failure)
//   recurrence_emulator run <dir>    one op call: reads <dir>/spec.txt and the input tensors, writes
//                                    the outputs (raw little-endian arrays, see tests/test_cuda_host.py)
//
// `run` follows recurrence_kernel.cuh block by block, phase by phase, group by group and chunk by
// chunk with the pass (recurrence_passes.h), the cells (cells.h), the packing and the fragment
// positions (fragment_layout.h) the kernel uses, and the plan of recurrence_planner.cpp. Only the
// warp-level multiply is emulated: from the lanes' registers through the PTX ISA's definition of
// the m16n8k16 / m16n8k8 fragments (independent of fragment_layout.h's permuted k order), or the
// FMA tile of fragment_ops.cuh.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "../fragment_layout.h"
#include "../recurrence_passes.h"
#include "../recurrence_planner.h"

using namespace fused_rnn::cuda;

namespace {

// ---- The PTX ISA's fragment layouts (logical k), lane = 4g + q. ----

struct Logical {
  int row;  // A: row; B: column
  int k;
};

template <Math M>
constexpr int a_registers() {  // operands a lane holds of one A fragment
  return M == Math::kBf16Mma || M == Math::kF16Mma ? 8 : M == Math::kTf32Mma ? 4 : 8;
}
template <Math M>
constexpr int b_registers() {
  return M == Math::kBf16Mma || M == Math::kF16Mma ? 4 : M == Math::kTf32Mma ? 2 : 8;
}

template <Math M>
Logical ptx_a(int lane, int i) {
  const int g = lane >> 2, q = lane & 3;
  if constexpr (M == Math::kTf32Mma) {
    return {g + 8 * (i & 1), q + 4 * (i >> 1)};
  } else {
    return {g + 8 * ((i >> 1) & 1), 2 * q + (i & 1) + 8 * (i >> 2)};
  }
}

template <Math M>
Logical ptx_b(int lane, int i) {
  const int g = lane >> 2, q = lane & 3;
  if constexpr (M == Math::kTf32Mma) {
    return {g, q + 4 * i};
  } else {
    return {g, 2 * q + (i & 1) + 8 * (i >> 1)};
  }
}

template <Math M>
using Op = typename MathTypes<M>::Operand;
template <Math M>
using Acc = typename MathTypes<M>::Accumulator;

/// c[lane][i] += the warp-level multiply of the lanes' A and B registers.
template <Math M>
void warp_multiply(const std::vector<Op<M>>& a, const std::vector<Op<M>>& b, std::vector<Acc<M>>& c) {
  constexpr int kA = a_registers<M>(), kB = b_registers<M>(), kK = k_per_step(M);
  if constexpr (M == Math::kF32Fma || M == Math::kF64Fma) {
    for (int lane = 0; lane < 32; ++lane) {  // fragment_ops.cuh FmaOps::mma
      const Op<M>* x = &a[lane * kA];
      const Op<M>* y = &b[lane * kB];
      Acc<M>* d = &c[lane * 4];
      for (int k = 0; k < 4; ++k) {
        d[0] = std::fma(x[k], y[k], d[0]);
        d[1] = std::fma(x[k], y[4 + k], d[1]);
        d[2] = std::fma(x[4 + k], y[k], d[2]);
        d[3] = std::fma(x[4 + k], y[4 + k], d[3]);
      }
    }
  } else {
    float A[16][kK] = {}, B[kK][8] = {};
    for (int lane = 0; lane < 32; ++lane) {
      for (int i = 0; i < kA; ++i) {
        const Logical at = ptx_a<M>(lane, i);
        A[at.row][at.k] = to_accumulator(a[lane * kA + i]);
      }
      for (int i = 0; i < kB; ++i) {
        const Logical at = ptx_b<M>(lane, i);
        B[at.k][at.row] = to_accumulator(b[lane * kB + i]);
      }
    }
    for (int lane = 0; lane < 32; ++lane) {
      for (int i = 0; i < 4; ++i) {
        const CPosition at = c_element_position(lane, i);
        float sum = 0;
        for (int k = 0; k < kK; ++k) {
          sum += A[at.row][k] * B[k][at.column];
        }
        c[lane * 4 + i] += sum;
      }
    }
  }
}

/// The lanes' A registers of the packed fragment at `fragment` (fragment_ops.cuh load_a).
template <Math M>
void load_a(const Op<M>* fragment, std::vector<Op<M>>& a) {
  constexpr int kA = a_registers<M>();
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < kA; ++i) {
      if constexpr (M == Math::kF32Fma || M == Math::kF64Fma) {
        const int g = lane >> 2;  // rows g and g + 8 of the 16 x 4 tile
        a[lane * kA + i] = fragment[4 * (i < 4 ? g : g + 8) + (i & 3)];
      } else {
        a[lane * kA + i] = fragment[lane * kA + i];
      }
    }
  }
}

/// The lanes' B registers of one n-tile of a slab (fragment_ops.cuh load_b).
template <Math M>
void load_b(const std::vector<Op<M>>& slab, int64_t row_elements, int64_t column0, int64_t k0,
            std::vector<Op<M>>& b) {
  constexpr int kB = b_registers<M>();
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < kB; ++i) {
      const BPosition at = b_element_position<M>(lane, i);
      b[lane * kB + i] = slab[(column0 + at.column) * row_elements + k0 + at.k];
    }
  }
}

// ---- Self-checks. ----

int failures = 0;
void expect(bool condition, const std::string& what) {
  if (!condition && failures++ == 0) {
    std::printf("FAIL %s\n", what.c_str());
  }
}

template <Math M>
void check_layout() {
  constexpr int kK = k_per_step(M), kA = a_registers<M>(), kB = b_registers<M>();
  const std::string name = "math " + std::to_string(static_cast<int>(M));
  // Every (row, k) of a fragment is packed once.
  std::vector<int> seen(16 * kK, 0);
  for (int slot = 0; slot < fragment_elements(M); ++slot) {
    const APosition at = a_slot_position<M>(slot);
    expect(at.row >= 0 && at.row < 16 && at.k >= 0 && at.k < kK, name + ": A slot in range");
    ++seen[at.row * kK + at.k];
  }
  for (int count : seen) {
    expect(count == 1, name + ": A slots cover the tile once");
  }
  if constexpr (M != Math::kF32Fma && M != Math::kF64Fma) {
    // The A slots of a lane are its registers in the permuted k order, and its B elements are
    // contiguous in k (one vector load): the permutation maps logical k to physical k the same way
    // for A and B.
    int permutation[kK];
    for (int k = 0; k < kK; ++k) {
      permutation[k] = -1;
    }
    for (int lane = 0; lane < 32; ++lane) {
      for (int i = 0; i < kA; ++i) {
        const APosition physical = a_slot_position<M>(lane * kA + i);
        const Logical logical = ptx_a<M>(lane, i);
        expect(physical.row == logical.row, name + ": A rows agree with the PTX layout");
        expect(permutation[logical.k] < 0 || permutation[logical.k] == physical.k, name + ": one k permutation");
        permutation[logical.k] = physical.k;
      }
      for (int i = 0; i < kB; ++i) {
        const BPosition physical = b_element_position<M>(lane, i);
        const Logical logical = ptx_b<M>(lane, i);
        expect(physical.column == logical.row, name + ": B columns agree with the PTX layout");
        expect(permutation[logical.k] == physical.k, name + ": B uses A's k permutation");
        expect(physical.k == b_element_position<M>(lane, 0).k + i, name + ": B elements contiguous");
      }
    }
  }
  // A random tile multiplied through the packed layout equals the plain product.
  std::vector<double> w(16 * kK), h(8 * kK);
  for (size_t i = 0; i < w.size(); ++i) w[i] = ((i * 7919) % 17) / 8.0 - 1.0;
  for (size_t i = 0; i < h.size(); ++i) h[i] = ((i * 104729) % 13) / 8.0 - 0.75;
  std::vector<Op<M>> fragment(fragment_elements(M)), slab(8 * kK), a(32 * kA), b(32 * kB);
  for (int slot = 0; slot < fragment_elements(M); ++slot) {
    const APosition at = a_slot_position<M>(slot);
    fragment[slot] = to_operand<M>(static_cast<Acc<M>>(w[at.row * kK + at.k]));
  }
  for (int i = 0; i < 8 * kK; ++i) {
    slab[i] = to_operand<M>(static_cast<Acc<M>>(h[i]));
  }
  load_a<M>(fragment.data(), a);
  load_b<M>(slab, kK, 0, 0, b);
  std::vector<Acc<M>> c(32 * 4, Acc<M>(0));
  warp_multiply<M>(a, b, c);
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 4; ++i) {
      const CPosition at = c_element_position(lane, i);
      double expected = 0;
      for (int k = 0; k < kK; ++k) {
        expected += w[at.row * kK + k] * h[at.column * kK + k];
      }
      expect(std::abs(c[lane * 4 + i] - expected) < 1e-6, name + ": tile product");
    }
  }
}

/// Every element of a unit slice's packed weights is a distinct (row, k) of the block's product.
void check_packing(const RecurrencePlan& plan, Math math) {
  const RecurrenceGeometry& g = plan.geometry;
  std::map<std::pair<int64_t, int64_t>, int> seen;
  const int64_t elements = g.fragments_per_slice * fragment_elements(math);
  for (int64_t i = 0; i < elements; ++i) {
    WeightPosition p{};
    switch (math) {
      case Math::kBf16Mma: p = packed_weight_position<Math::kBf16Mma>(g, i); break;
      case Math::kF16Mma: p = packed_weight_position<Math::kF16Mma>(g, i); break;
      case Math::kTf32Mma: p = packed_weight_position<Math::kTf32Mma>(g, i); break;
      case Math::kF32Fma: p = packed_weight_position<Math::kF32Fma>(g, i); break;
      case Math::kF64Fma: p = packed_weight_position<Math::kF64Fma>(g, i); break;
    }
    expect(p.row >= 0 && p.row < g.rows_per_block, "packed row in the block");
    ++seen[{p.row, p.k}];
  }
  expect(static_cast<int64_t>(seen.size()) == elements, "packed positions distinct");
  for (int64_t row = 0; row < g.rows_per_block; ++row) {
    for (int64_t k = 0; k < g.k; ++k) {
      expect(seen.count({row, k}) == 1, "every weight of the block packed");
    }
  }
}

void self_check() {
  check_layout<Math::kBf16Mma>();
  check_layout<Math::kF16Mma>();
  check_layout<Math::kTf32Mma>();
  check_layout<Math::kF32Fma>();
  check_layout<Math::kF64Fma>();
  const DeviceDescription device = h100_description();
  for (int direction = 0; direction < 2; ++direction) {
    for (int index = 0; index < engine_count(static_cast<Direction>(direction)); ++index) {
      const EngineConfig& config = engines(static_cast<Direction>(direction))[index];
      for (const int64_t hidden : {1, 33, 100, 300}) {
        for (const int warps_m : {1, 2, 8}) {
          const ProblemShape problem{CellKind::kLstm, static_cast<Direction>(direction), config.math,
                                     5, hidden, hidden, false};
          RecurrencePlan plan;
          if (plan_candidate(problem, index, warps_m, 1, 16, device, plan)) {
            check_packing(plan, config.math);
          }
        }
      }
    }
  }
  std::printf(failures == 0 ? "ok\n" : "%d failures\n", failures);
}

// ---- One op call. ----

std::map<std::string, std::string> read_spec(const std::string& dir) {
  std::map<std::string, std::string> spec;
  std::ifstream in(dir + "/spec.txt");
  std::string key, value;
  while (in >> key >> value) {
    spec[key] = value;
  }
  return spec;
}

template <typename T>
std::vector<T> read_tensor(const std::string& dir, const std::string& name, int64_t count) {
  std::vector<T> values(count);
  std::ifstream in(dir + "/" + name + ".bin", std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "missing input %s\n", name.c_str());
    std::exit(2);
  }
  in.read(reinterpret_cast<char*>(values.data()), count * sizeof(T));
  return values;
}

template <typename T>
void write_tensor(const std::string& dir, const std::string& name, const std::vector<T>& values) {
  std::ofstream out(dir + "/" + name + ".bin", std::ios::binary);
  out.write(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

/// Runs every phase of `Pass` on `args` with `plan`, as the kernel's blocks would (one launch per
/// phase: the carried state goes through the workspace between phases).
template <typename Pass>
void emulate(typename Pass::Args args, const RecurrencePlan& plan, int64_t steps) {
  constexpr Math M = Pass::kMath;
  constexpr int kA = a_registers<M>(), kB = b_registers<M>(), kK = k_per_step(M);
  using O = Op<M>;
  using A = Acc<M>;
  RecurrenceGeometry g = plan.geometry;
  g.steps = steps;
  const WorkspaceLayout layout = workspace_layout(plan, args.projected);
  std::vector<O> packed(g.unit_slices * g.fragments_per_slice * fragment_elements(M));
  std::vector<O> ring(2 * layout.ring_slot_elements, to_operand<M>(A(0)));
  std::vector<A> carries(g.carries * g.batch * g.hidden);
  args.packed = packed.data();
  args.ring = ring.data();
  args.ring_slot = layout.ring_slot_elements;
  args.carries = carries.data();

  prepare_workspace<Pass>(args, g, 0, 1);
  pack_weights<Pass>(args, g, 0, 1);
  const int64_t per_slice = g.fragments_per_slice * fragment_elements(M);

  const int64_t carry_stride = int64_t{g.units_per_block} * g.batch_per_block;
  std::vector<A> shared_carries(g.carries * carry_stride);
  std::vector<A> partials(int64_t{g.warps_k} * g.rows_per_block * g.partial_row_stride);
  const int64_t row_elements = g.chunk_elements;
  std::vector<O> slab(kGroupColumns * row_elements);
  std::vector<O> a(32 * kA), b(32 * kB);
  for (int64_t phase = 0; phase < Pass::phase_count(args, g); ++phase) {
    for (int block = 0; block < g.blocks; ++block) {
      const BlockSlice slice = block_slice(g, block);
      move_carries(g, slice, shared_carries.data(), carries.data(), /*to_shared=*/true, 0, 1);
      const bool product = Pass::has_product(args, g, phase);
      const O* source = Pass::product_source(args, phase) + slice.row0 * g.k_pad;
      const O* packed_slice = packed.data() + slice.unit_slice * per_slice;
      const int groups = static_cast<int>(ceil_div(slice.rows, kGroupColumns));
      for (int group = 0; group < groups; ++group) {
        const int columns = std::min(kGroupColumns, slice.rows - group * kGroupColumns);
        const int n_live = static_cast<int>(ceil_div(columns, 8));
        std::vector<typename Pass::Inputs> inputs(slice.units * columns);
        for (int pair = 0; pair < slice.units * columns; ++pair) {
          inputs[pair] = Pass::load(args, g, phase, slice.unit0 + pair % slice.units,
                                    slice.row0 + group * kGroupColumns + pair / slice.units);
        }
        if (product) {
          // tiles[warp][m][n][lane * 4 + i]
          std::vector<std::vector<A>> tiles(kWarps * g.m_tiles * kNTiles, std::vector<A>(128, A(0)));
          for (int chunk = 0; chunk < g.k_chunks; ++chunk) {
            const int64_t k0 = int64_t{chunk} * g.chunk_elements;
            std::fill(slab.begin(), slab.end(), to_operand<M>(A(0)));  // shared memory: garbage on the GPU, unread
            for (int r = 0; r < columns; ++r)
              for (int64_t k = 0; k0 + k < g.k_pad && k < row_elements; ++k)
                slab[r * row_elements + k] = source[(int64_t{group} * kGroupColumns + r) * g.k_pad + k0 + k];
            for (int warp = 0; warp < kWarps; ++warp) {
              const int wm = warp / g.warps_k, wk = warp % g.warps_k;
              const int first = (chunk * g.warps_k + wk) * g.k_steps_per_chunk;
              const int count = std::max(0, std::min(g.k_steps - first, g.k_steps_per_chunk));
              for (int s = 0; s < count; ++s) {
                for (int m = 0; m < g.m_tiles; ++m) {
                  load_a<M>(packed_slice + packed_fragment_index(g, wm, wk, m, chunk * g.k_steps_per_chunk + s) *
                                               fragment_elements(M),
                            a);
                  for (int n = 0; n < n_live; ++n) {
                    load_b<M>(slab, row_elements, n * 8, int64_t{wk * g.k_steps_per_chunk + s} * kK, b);
                    warp_multiply<M>(a, b, tiles[(warp * g.m_tiles + m) * kNTiles + n]);
                  }
                }
              }
            }
          }
          for (int warp = 0; warp < kWarps; ++warp) {  // ProductEngine::store
            const int wm = warp / g.warps_k, wk = warp % g.warps_k;
            for (int m = 0; m < g.m_tiles; ++m)
              for (int n = 0; n < n_live; ++n)
                for (int lane = 0; lane < 32; ++lane)
                  for (int i = 0; i < 4; ++i) {
                    const CPosition at = c_element_position(lane, i);
                    const int row = (wm * g.m_tiles + m) * 16 + at.row;
                    partials[partial_index(g, wk, row, n * 8 + at.column)] =
                        tiles[(warp * g.m_tiles + m) * kNTiles + n][lane * 4 + i];
                  }
          }
        }
        for (int pair = 0; pair < slice.units * columns; ++pair) {
          const int u = pair % slice.units, column = pair / slice.units;
          A values[Pass::kProducts];
          for (int i = 0; i < Pass::kProducts; ++i) {
            values[i] = product ? sum_partials(partials.data(), g, Pass::product_row(g, i, u), column) : A(0);
          }
          Pass::finish(args, g, phase, slice.unit0 + u, slice.row0 + group * kGroupColumns + column, inputs[pair],
                       values, shared_carries.data() + shared_carry_index(g, 0, u, group * kGroupColumns + column),
                       carry_stride);
        }
      }
      move_carries(g, slice, shared_carries.data(), carries.data(), /*to_shared=*/false, 0, 1);
    }
  }
}

/// The tensors of one call, as raw arrays of the storage / accumulation type.
template <Math M>
struct Tensors {
  using S = typename MathTypes<M>::Storage;
  std::string dir;
  std::map<std::string, std::vector<S>> storage;
  std::map<std::string, std::vector<Acc<M>>> accumulators;
  std::vector<int64_t> lengths;

  const S* in(const std::string& name, int64_t count) {
    return (storage[name] = read_tensor<S>(dir, name, count)).data();
  }
  const Acc<M>* in_acc(const std::string& name, int64_t count) {
    return (accumulators[name] = read_tensor<Acc<M>>(dir, name, count)).data();
  }
  S* out(const std::string& name, int64_t count) { return (storage["out_" + name] = std::vector<S>(count)).data(); }
  Acc<M>* out_acc(const std::string& name, int64_t count) {
    return (accumulators["out_" + name] = std::vector<Acc<M>>(count)).data();
  }
  void write() {
    for (auto& [name, values] : storage)
      if (name.rfind("out_", 0) == 0) write_tensor(dir, name, values);
    for (auto& [name, values] : accumulators)
      if (name.rfind("out_", 0) == 0) write_tensor(dir, name, values);
  }
};

template <typename Cell, Math M>
void run_cell(const std::string& dir, std::map<std::string, std::string>& spec, Cell cell) {
  const int64_t T = std::stoll(spec["steps"]), B = std::stoll(spec["batch"]), H = std::stoll(spec["hidden"]);
  const int G = Cell::kGates;
  const bool forward = spec["direction"] == "forward", save = spec["save"] == "1";
  const bool lstm = Cell::kKind == CellKind::kLstm, gru = Cell::kKind == CellKind::kGru;
  const Direction direction = forward ? Direction::kForward : Direction::kBackward;
  const ProblemShape problem{Cell::kKind, direction, M, B, H, H, false};
  // The planner's own plan, or the first catalogue entry of the requested regime and m-tiles that
  // takes the requested warps, units, rows per block and chunk limit.
  RecurrencePlan plan{};
  bool planned = false;
  if (spec["regime"] == "plan") {
    plan = plan_recurrence(problem, h100_description());
    planned = true;
  }
  for (int i = 0; i < engine_count(direction) && !planned; ++i) {
    const EngineConfig& e = engines(direction)[i];
    planned = e.math == M && static_cast<int>(e.regime) == std::stoi(spec["regime"]) &&
              e.m_tiles == std::stoi(spec["m_tiles"]) &&
              plan_candidate(problem, i, std::stoi(spec["warps_m"]), std::stoll(spec["units"]),
                             std::stoll(spec["batch_per_block"]), h100_description(), plan,
                             std::stoi(spec["max_chunk_steps"]));
  }
  if (!planned) {
    std::printf("{\"planned\": false}\n");
    return;
  }
  Tensors<M> t{dir};
  if (spec["lengths"] == "1") {
    t.lengths = read_tensor<int64_t>(dir, "lengths", B);
  }
  const int64_t* lengths = t.lengths.empty() ? nullptr : t.lengths.data();
  if (forward) {
    typename ForwardPass<Cell, M>::Args a{};
    a.cell = cell;
    a.xw = t.in("xw", T * B * G * H);
    a.w_hh = t.in("w_hh", G * H * H);
    a.h0 = t.in("h0", B * H);
    a.c0 = lstm ? t.in("c0", B * H) : nullptr;
    a.b_hn = gru ? t.in("b_hn", H) : nullptr;
    a.lengths = lengths;
    a.hs = t.out("hs", T * B * H);
    a.h_n = t.out("h_n", B * H);
    a.c_n = lstm ? t.out("c_n", B * H) : nullptr;
    a.cs = lstm && save ? t.out_acc("cs", T * B * H) : nullptr;
    a.gates = (lstm || gru) && save ? t.out("gates", T * B * 4 * H) : nullptr;
    emulate<ForwardPass<Cell, M>>(a, plan, T);
  } else {
    typename BackwardPass<Cell, M>::Args a{};
    a.cell = cell;
    a.grad_hs = t.in("grad_hs", T * B * H);
    a.grad_h_n = t.in("grad_h_n", B * H);
    a.grad_c_n = lstm ? t.in("grad_c_n", B * H) : nullptr;
    a.w_hh = t.in("w_hh", G * H * H);
    a.h0 = t.in("h0", B * H);
    a.c0 = lstm ? t.in("c0", B * H) : nullptr;
    a.lengths = lengths;
    a.hs = t.in("hs", T * B * H);
    a.cs = lstm ? t.in_acc("cs", T * B * H) : nullptr;
    a.gates = lstm || gru ? t.in("gates", T * B * 4 * H) : nullptr;
    a.dxw = t.out("dxw", T * B * G * H);
    a.d_hn = gru ? t.out("d_hn", T * B * H) : nullptr;
    a.dh0 = t.out("dh0", B * H);
    a.dc0 = lstm ? t.out("dc0", B * H) : nullptr;
    emulate<BackwardPass<Cell, M>>(a, plan, T);
  }
  t.write();
  const RecurrenceGeometry& g = plan.geometry;
  std::printf(
      "{\"planned\": true, \"engine\": %d, \"regime\": %d, \"blocks\": %d, \"unit_slices\": %d, "
      "\"batch_slices\": %d, \"groups\": %d, \"warps_k\": %d, \"k_chunks\": %d, \"stages\": %d}\n",
      plan.engine, static_cast<int>(plan.config.regime), g.blocks, g.unit_slices, g.batch_slices,
      g.batch_per_block / kGroupColumns, g.warps_k, g.k_chunks, g.stages);
}

template <Math M>
void run_math(const std::string& dir, std::map<std::string, std::string>& spec) {
  const std::string cell = spec["cell"];
  if (cell == "rnn_tanh" || cell == "rnn_relu") {
    run_cell<RnnCell, M>(dir, spec, RnnCell{cell == "rnn_relu"});
  } else if (cell == "lstm") {
    run_cell<LstmCell, M>(dir, spec, LstmCell{});
  } else {
    run_cell<GruCell, M>(dir, spec, GruCell{});
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "check") {
    self_check();
    return failures == 0 ? 0 : 1;
  }
  if (mode != "run" || argc < 3) {
    std::fprintf(stderr, "usage: %s check | run <dir>\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[2];
  auto spec = read_spec(dir);
  switch (std::stoi(spec["math"])) {
    case 0: run_math<Math::kBf16Mma>(dir, spec); break;
    case 1: run_math<Math::kF16Mma>(dir, spec); break;
    case 2: run_math<Math::kTf32Mma>(dir, spec); break;
    case 3: run_math<Math::kF32Fma>(dir, spec); break;
    default: run_math<Math::kF64Fma>(dir, spec); break;
  }
  return 0;
}
