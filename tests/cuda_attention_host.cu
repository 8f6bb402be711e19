// A host program over the __host__ __device__ functions of the CUDA attention kernels
// (csrc/cuda/attention_math.cuh) and their planner (csrc/cuda/attention_plan.h), run by
// tests/test_cuda_attention_host.py:
//
//   cuda_attention_host traits               the dtype traits (Numerics) as one line of JSON
//   cuda_attention_host fragments            the warp tile products built from the kernels'
//                                            fragment maps, on an emulation of ldmatrix and
//                                            mma.m16n8k16 written from the PTX ISA's tables
//   cuda_attention_host plan                 for each line "PASS SCORE DTYPE B TQ TK F DV
//                                            PROCESSORS SHARED" of stdin, the tiling, grid and
//                                            shared-memory layout as one line of JSON
//   cuda_attention_host forward IN OUT       the kernels' tile loop (masking, online softmax,
//   cuda_attention_host backward IN OUT      split-K, recomputed weights, score gradients) on the
//                                            host, on the problem in file IN (see read_problem)
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../csrc/cuda/attention_math.cuh"
#include "../csrc/cuda/attention_plan.h"
#include "cuda_attention_problem.h"

using namespace fused_rnn::cuda;
using namespace fused_rnn::cuda::attention;

namespace {

// ------------------------------------------------------------------------------------------------
// ldmatrix and mma.m16n8k16 on the host, from the PTX ISA ("Warp-level matrix load instruction:
// ldmatrix", "Matrix Fragments for mma.m16n8k16 with floating point type"). A lane's 32-bit
// register of two b16 elements is a pair of floats here.
// ------------------------------------------------------------------------------------------------

struct Pair {
  float lo, hi;
};

/// ldmatrix.x4: lanes 8 m .. 8 m + 7 give the rows of matrix m (8 consecutive elements each);
/// lane l receives, in register m, row l / 4, elements 2 (l % 4) and 2 (l % 4) + 1 of matrix m
/// (of its transpose with .trans).
void ldmatrix_x4(const float* const (&row_of_lane)[32], bool trans, Pair (&regs)[32][4]) {
  for (int lane = 0; lane < 32; ++lane) {
    for (int m = 0; m < 4; ++m) {
      const int r = lane / 4, c = 2 * (lane % 4);
      if (!trans) {
        regs[lane][m] = {row_of_lane[8 * m + r][c], row_of_lane[8 * m + r][c + 1]};
      } else {
        regs[lane][m] = {row_of_lane[8 * m + c][r], row_of_lane[8 * m + c + 1][r]};
      }
    }
  }
}

/// d = a (16 x 16) b (16 x 8) + d with the fragments of the PTX tables: group g = l / 4,
/// t = l % 4; A: a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..);
/// B: b0 (k = 2t..2t+1, n = g), b1 (k = 2t+8.., n = g); C: c0, c1 (g, 2t..2t+1), c2, c3 (g+8, 2t..).
void mma_16816(const Pair (&a)[32][4], const Pair (&b)[32][2], double (&d)[32][4]) {
  double A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    const int a_rows[4] = {g, g + 8, g, g + 8}, a_cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
    for (int r = 0; r < 4; ++r) {
      A[a_rows[r]][a_cols[r]] = a[lane][r].lo;
      A[a_rows[r]][a_cols[r] + 1] = a[lane][r].hi;
    }
    for (int r = 0; r < 2; ++r) {
      B[2 * t + 8 * r][g] = b[lane][r].lo;
      B[2 * t + 8 * r + 1][g] = b[lane][r].hi;
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    for (int e = 0; e < 4; ++e) {
      const int row = g + 8 * (e / 2), col = 2 * t + e % 2;
      for (int k = 0; k < 16; ++k) d[lane][e] += A[row][k] * B[k][col];
    }
  }
}

/// acc[lane][n] and acc[lane][n + 1] += a . the B fragments of two n-tiles, which ldmatrix.x4 (.trans)
/// loads from the rows the lanes give.
template <int kTiles>
void mma_tile_pair(const Pair (&a)[32][4], const float* const (&b_rows)[32], bool trans, double (&acc)[32][kTiles][4],
                   int n) {
  Pair b4[32][4];
  ldmatrix_x4(b_rows, trans, b4);
  for (int half = 0; half < 2; ++half) {
    Pair b[32][2];
    double d[32][4];
    for (int lane = 0; lane < 32; ++lane) {
      b[lane][0] = b4[lane][2 * half], b[lane][1] = b4[lane][2 * half + 1];
      for (int e = 0; e < 4; ++e) d[lane][e] = acc[lane][n + half][e];
    }
    mma_16816(a, b, d);
    for (int lane = 0; lane < 32; ++lane) {
      for (int e = 0; e < 4; ++e) acc[lane][n + half][e] = d[lane][e];
    }
  }
}

/// Mismatches of the accumulator tile acc (layout of attention_math.cuh) with expected(row, col).
template <int kTiles, typename Expected>
int check_tile(const char* what, const double (&acc)[32][kTiles][4], const Expected& expected) {
  int failures = 0;
  for (int lane = 0; lane < 32; ++lane) {
    for (int n = 0; n < kTiles; ++n) {
      for (int e = 0; e < 4; ++e) {
        const double want = expected(accumulator_row(lane, e), accumulator_col(lane, n, e));
        if (acc[lane][n][e] != want && failures++ < 5) {
          std::printf("%s: lane %d tile %d element %d: %g != %g\n", what, lane, n, e, acc[lane][n][e], want);
        }
      }
    }
  }
  return failures;
}

/// The warp's score tile rows [16, F] . cols [64, F]^T and product P [16, 64] . M [64, W] through
/// the kernels' fragment maps, against the plain products.
int check_fragments() {
  constexpr int kF = 48, kColumns = 64, kW = 32, kStride = kF + 8, kWStride = kW + 8;
  std::vector<float> rows(16 * kStride), cols(kColumns * kStride), m(kColumns * kWStride);
  for (int i = 0; i < 16 * kStride; ++i) rows[i] = static_cast<float>((i * 7) % 11 - 5);
  for (int i = 0; i < kColumns * kStride; ++i) cols[i] = static_cast<float>((i * 5) % 13 - 6);
  for (int i = 0; i < kColumns * kWStride; ++i) m[i] = static_cast<float>((i * 3) % 7 - 3);

  double s[32][kColumns / 8][4] = {};
  for (int k0 = 0; k0 < kF; k0 += 16) {
    const float* a_rows[32];
    for (int lane = 0; lane < 32; ++lane) {
      const TileIndex i = a_fragment_source(lane, k0);
      a_rows[lane] = &rows[i.row * kStride + i.col];
    }
    Pair a[32][4];
    ldmatrix_x4(a_rows, false, a);
    for (int n = 0; n < kColumns / 8; n += 2) {
      const float* b_rows[32];
      for (int lane = 0; lane < 32; ++lane) {
        const TileIndex i = b_fragment_pair_source(lane, 8 * n, k0);
        b_rows[lane] = &cols[i.row * kStride + i.col];
      }
      mma_tile_pair(a, b_rows, false, s, n);
    }
  }
  int failures = check_tile("scores", s, [&](int row, int col) {
    double sum = 0;
    for (int f = 0; f < kF; ++f) sum += rows[row * kStride + f] * cols[col * kStride + f];
    return sum;
  });

  // P in the accumulator layout: P[row][col] = row - col % 5.
  auto p_value = [](int row, int col) { return static_cast<float>(row - col % 5); };
  double o[32][kW / 8][4] = {};
  for (int kk = 0; kk < kColumns / 16; ++kk) {
    Pair a[32][4];
    for (int lane = 0; lane < 32; ++lane) {
      for (int r = 0; r < 4; ++r) {
        const AccumulatorPair pair = a_fragment_from_accumulator(kk, r);
        const int row = accumulator_row(lane, pair.element);
        a[lane][r] = {p_value(row, accumulator_col(lane, pair.tile, pair.element)),
                      p_value(row, accumulator_col(lane, pair.tile, pair.element + 1))};
      }
    }
    for (int n = 0; n < kW / 8; n += 2) {
      const float* b_rows[32];
      for (int lane = 0; lane < 32; ++lane) {
        const TileIndex i = b_fragment_pair_source_trans(lane, 16 * kk, 8 * n);
        b_rows[lane] = &m[i.row * kWStride + i.col];
      }
      mma_tile_pair(a, b_rows, true, o, n);
    }
  }
  failures += check_tile("product", o, [&](int row, int col) {
    double sum = 0;
    for (int c = 0; c < kColumns; ++c) sum += p_value(row, c) * m[c * kWStride + col];
    return sum;
  });
  std::printf(failures == 0 ? "fragments ok\n" : "fragments: %d mismatches\n", failures);
  return failures == 0 ? 0 : 1;
}

// ------------------------------------------------------------------------------------------------
// The planner.
// ------------------------------------------------------------------------------------------------

void print_plan(AttentionPass pass, AttentionScore score, DType dtype, const AttentionShape& shape,
                const AttentionDeviceLimits& limits) {
  const AttentionTiling t = plan_attention(pass, score, dtype, shape, limits);
  const AttentionSharedLayout l = attention_shared_layout(pass, score, dtype, t);
  const AttentionGrid g = attention_grid(pass, shape, t);
  std::printf(
      "{\"warps\": %d, \"row_blocks\": %lld, \"feature_chunk\": %d, \"feature_chunks\": %d, \"value_chunk\": %d, "
      "\"value_chunks\": %d, \"splits\": %d, \"tiles_per_split\": %lld, \"shared_bytes\": %lld, "
      "\"block_columns\": %d, \"output_width\": %d, \"element_bytes\": %d, \"accumulator_bytes\": %d, "
      "\"feature_stride\": %d, \"value_stride\": %d, \"rows\": %lld, \"cols\": %lld, \"value_rows\": %lld, "
      "\"value_cols\": %lld, \"v\": %lld, \"column_stats\": %lld, \"score_grads\": %lld, \"bytes\": %lld, "
      "\"grid\": [%lld, %d, %d]}\n",
      t.warps, static_cast<long long>(t.row_blocks), t.feature_chunk, t.feature_chunks, t.value_chunk,
      t.value_chunks, t.splits, static_cast<long long>(t.tiles_per_split), static_cast<long long>(t.shared_bytes),
      attention_block_columns(dtype, pass), attention_output_width(dtype), attention_element_bytes(dtype),
      attention_accumulator_bytes(dtype), l.feature_stride, l.value_stride, static_cast<long long>(l.rows),
      static_cast<long long>(l.cols), static_cast<long long>(l.value_rows), static_cast<long long>(l.value_cols),
      static_cast<long long>(l.v), static_cast<long long>(l.column_stats), static_cast<long long>(l.score_grads),
      static_cast<long long>(l.bytes), static_cast<long long>(g.x), g.y, g.z);
}

int print_plans() {
  int pass_code, score_code, dtype_code, processors;
  long long b, tq, tk, f, dv, shared;
  while (std::scanf("%d %d %d %lld %lld %lld %lld %lld %d %lld", &pass_code, &score_code, &dtype_code, &b, &tq, &tk,
                    &f, &dv, &processors, &shared) == 10) {
    print_plan(static_cast<AttentionPass>(pass_code), static_cast<AttentionScore>(score_code),
               static_cast<DType>(dtype_code), {b, tq, tk, f, dv}, {processors, shared});
  }
  return 0;
}

// ------------------------------------------------------------------------------------------------
// The tile loop on the host.
// ------------------------------------------------------------------------------------------------

template <typename Scalar>
struct Model {
  using Acc = AccOf<Scalar>;
  static constexpr TanhKind kTanh = Numerics<Scalar>::kTanh;
  const Problem& p;
  AttentionShape n;
  std::vector<Acc> query, keys, v, values;

  explicit Model(const Problem& problem)
      : p(problem), n(problem.shape()), query(as_input<Scalar>(problem.query)), keys(as_input<Scalar>(problem.keys)),
        v(as_input<Scalar>(problem.v)), values(as_input<Scalar>(problem.values)) {}

  int64_t length(int64_t b) const { return p.has_lengths() ? static_cast<int64_t>(p.lengths[b]) : n.keys; }

  /// The raw score of query i and key j of batch row b (before the scale).
  Acc score(int64_t b, int64_t i, int64_t j) const {
    const Acc* q = &query[(b * n.queries + i) * n.features];
    const Acc* k = &keys[(b * n.keys + j) * n.features];
    Acc s = 0;
    for (int64_t f = 0; f < n.features; ++f) {
      s += p.score() == AttentionScore::kAdditive ? additive_term<kTanh>(v[f], q[f], k[f]) : q[f] * k[f];
    }
    return s;
  }

  /// P as the context and d_values products use it: rounded to Scalar on tensor cores.
  static Acc product_weight(Acc weight) { return Numerics<Scalar>::kTensorCores ? round_to<Scalar>(weight) : weight; }

  /// context, lse and weights, the key tiles of each query row walked split by split as the
  /// forward kernel's plan cuts them.
  void forward(const char* out_path) const {
    const AttentionTiling t = plan_attention(AttentionPass::kForward, p.score(), Numerics<Scalar>::kDType, n, p.limits());
    const int columns = attention_block_columns(Numerics<Scalar>::kDType, AttentionPass::kForward);
    const Acc scale = static_cast<Acc>(p.scale), scale2 = static_cast<Acc>(p.scale * kLog2e);
    const int64_t rows = n.batch * n.queries;
    std::vector<Acc> split_context(t.splits * rows * n.value_size), split_lse(t.splits * rows);
    std::vector<Acc> scores(rows * n.keys, 0), context(rows * n.value_size), lse(rows), weights;
    for (int64_t b = 0; b < n.batch; ++b) {
      const int64_t len = length(b), live_tiles = (len + columns - 1) / columns;
      for (int64_t i = 0; i < n.queries; ++i) {
        const int64_t row = b * n.queries + i;
        for (int split = 0; split < t.splits; ++split) {
          SoftmaxRow<Acc> state = softmax_row_start<Acc>();
          std::vector<Acc> o(n.value_size, 0), s2(columns);
          const int64_t end = std::min<int64_t>((split + 1) * t.tiles_per_split, live_tiles);
          for (int64_t tile = split * t.tiles_per_split; tile < end; ++tile) {
            Acc tile_max = minus_infinity<Acc>();
            for (int c = 0; c < columns; ++c) {
              const int64_t j = tile * columns + c;
              const bool live = key_is_live(j, len);
              const Acc raw = live ? score(b, i, j) : Acc(0);
              if (live) scores[row * n.keys + j] = raw * scale;
              s2[c] = live ? raw * scale2 : minus_infinity<Acc>();
              tile_max = std::max(tile_max, s2[c]);
            }
            const Acc factor = softmax_row_rescale(state, tile_max);
            for (auto& x : o) x *= factor;
            for (int c = 0; c < columns; ++c) {
              const Acc weight = softmax_term(s2[c], state.max2);
              state.sum += weight;
              if (weight == Acc(0)) continue;
              const Acc* value = &values[(b * n.keys + tile * columns + c) * n.value_size];
              for (int64_t d = 0; d < n.value_size; ++d) o[d] += product_weight(weight) * value[d];
            }
          }
          const Acc inverse = state.sum > Acc(0) ? Acc(1) / state.sum : Acc(0);
          for (int64_t d = 0; d < n.value_size; ++d) split_context[(split * rows + row) * n.value_size + d] = o[d] * inverse;
          split_lse[split * rows + row] = softmax_row_lse(state);
        }
        lse[row] = t.splits == 1 ? split_lse[row] : combined_lse(&split_lse[row], t.splits, rows);
        for (int64_t d = 0; d < n.value_size; ++d) {
          Acc sum = 0;
          for (int split = 0; split < t.splits; ++split) {
            const Acc share = t.splits == 1 ? Acc(1) : split_share(split_lse[split * rows + row], lse[row]);
            sum += share * split_context[(split * rows + row) * n.value_size + d];
          }
          context[row * n.value_size + d] = sum;
        }
      }
    }
    if (p.need_weights()) {
      weights.assign(rows * n.keys, 0);
      for (int64_t row = 0; row < rows; ++row) {
        for (int64_t j = 0; j < n.keys; ++j) {
          if (key_is_live(j, length(row / n.queries))) {
            weights[row * n.keys + j] = exp2_of((scores[row * n.keys + j] - lse[row]) * Acc(kLog2e));
          }
        }
      }
    }
    std::vector<double> lse_out(lse.begin(), lse.end());
    const std::vector<double> context_out = as_output<Scalar>(context), weights_out = as_output<Scalar>(weights);
    write_arrays(out_path, {&context_out, &lse_out, &weights_out});
  }

  /// d_query, d_keys, d_v and d_values from the recomputed weights.
  void backward(const char* out_path) const {
    const std::vector<Acc> grad_context = as_input<Scalar>(p.grad_context), grad_weights = as_input<Scalar>(p.grad_weights);
    const std::vector<Acc> deltas = softmax_deltas<Scalar>(p);
    const Acc scale = static_cast<Acc>(p.scale), scale2 = static_cast<Acc>(p.scale * kLog2e);
    const bool additive = p.score() == AttentionScore::kAdditive;
    const int64_t F = n.features, Dv = n.value_size;
    std::vector<Acc> d_query(n.batch * n.queries * F, 0), d_keys(n.batch * n.keys * F, 0), d_v(F, 0);
    std::vector<Acc> d_values(n.batch * n.keys * Dv, 0);
    for (int64_t b = 0; b < n.batch; ++b) {
      for (int64_t i = 0; i < n.queries; ++i) {
        const int64_t row = b * n.queries + i;
        const Acc delta = deltas[row];
        const Acc lse2 = static_cast<Acc>(p.lse[row]) * Acc(kLog2e);
        for (int64_t j = 0; j < length(b); ++j) {
          const Acc weight = recomputed_weight(score(b, i, j) * scale2, lse2, true);
          Acc d_weight = p.has_grad_weights() ? grad_weights[row * n.keys + j] : Acc(0);
          for (int64_t d = 0; d < Dv; ++d) d_weight += grad_context[row * Dv + d] * values[(b * n.keys + j) * Dv + d];
          const Acc ds = score_gradient<Scalar>(weight, d_weight, delta);
          for (int64_t d = 0; d < Dv; ++d) {
            d_values[(b * n.keys + j) * Dv + d] += product_weight(weight) * grad_context[row * Dv + d];
          }
          const Acc* q = &query[row * F];
          const Acc* k = &keys[(b * n.keys + j) * F];
          for (int64_t f = 0; f < F; ++f) {
            if (additive) {
              const AdditiveGradientTerms<Acc> terms = additive_gradient_terms<kTanh>(ds, q[f], k[f]);
              d_query[row * F + f] += terms.pre;
              d_keys[(b * n.keys + j) * F + f] += terms.pre;
              d_v[f] += terms.v;
            } else {
              d_query[row * F + f] += ds * k[f];
              d_keys[(b * n.keys + j) * F + f] += ds * q[f];
            }
          }
        }
      }
    }
    for (size_t x = 0; x < d_query.size(); ++x) d_query[x] *= additive ? v[x % F] : scale;
    for (size_t x = 0; x < d_keys.size(); ++x) d_keys[x] *= additive ? v[x % F] : scale;
    const std::vector<double> outputs[4] = {as_output<Scalar>(d_query), as_output<Scalar>(d_keys),
                                            as_output<Scalar>(d_v), as_output<Scalar>(d_values)};
    write_arrays(out_path, {&outputs[0], &outputs[1], &outputs[2], &outputs[3]});
  }
};

template <typename Scalar>
int run_model(const std::string& command, const char* in_path, const char* out_path) {
  const Problem problem = read_problem(in_path, command == "backward");
  const Model<Scalar> model(problem);
  if (command == "forward") {
    model.forward(out_path);
  } else {
    model.backward(out_path);
  }
  return 0;
}

}  // namespace

template <typename Scalar>
void print_traits(const char* name, const char* separator) {
  const TanhKind tanh = Numerics<Scalar>::kTanh;
  std::printf("\"%s\": {\"tensor_cores\": %s, \"tanh\": \"%s\"}%s", name,
              Numerics<Scalar>::kTensorCores ? "true" : "false",
              tanh == TanhKind::kHardware ? "hardware" : tanh == TanhKind::kFromExp ? "from_exp" : "accurate",
              separator);
}

int main(int argc, char** argv) {
  const std::string command = argc > 1 ? argv[1] : "";
  if (command == "fragments") return check_fragments();
  if (command == "traits") {
    std::printf("{");
    print_traits<__half>("float16", ", ");
    print_traits<__nv_bfloat16>("bfloat16", ", ");
    print_traits<float>("float32", ", ");
    print_traits<double>("float64", "}\n");
    return 0;
  }
  if (command == "plan") return print_plans();
  if ((command == "forward" || command == "backward") && argc == 4) {
    return with_problem_dtype(argv[2], [&](auto scalar) { return run_model<decltype(scalar)>(command, argv[2], argv[3]); });
  }
  std::fprintf(stderr, "usage: %s traits | fragments | plan < PROBLEMS | forward IN OUT | backward IN OUT\n",
               argv[0]);
  return 2;
}
