// The attention kernels declared in attention.h, written once with at::vec::Vectorized and
// compiled once per CPU capability. The including file defines CPU_CAPABILITY (the namespace the
// kernels land in) and, for a vector ISA, CPU_CAPABILITY_<ISA> and the matching target options.
//
// Stages: forward_rows (online softmax over key chunks, one task per group of query rows), then
// for the backward softmax_deltas, query_gradients (one task per group of query rows) and
// key_gradients (one task per chunk of keys). A score policy (AdditiveScore, DotScore) supplies
// the scores of a group of query rows (Score::kRows) against a chunk of keys and their gradients.
// Where there are more than a few queries (transposes_keys, attention.h), products that run over
// a chunk's keys (the dot scores, grad_context . values) read the keys or values transposed
// (TransposedRows), one key per vector lane; otherwise they take one dot product per pair.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "attention.h"

namespace fused_rnn::cpu::CPU_CAPABILITY {

#include "vec_tanh.h"

namespace attention_detail {

// Keys scored together before one online-softmax update, and the keys of one task of the key
// sweep. A multiple of every vector size: a chunk of a TransposedRows block is whole vectors.
constexpr int64_t kKeyChunk = kAttentionKeyChunk;
// Query rows whose weights and score gradients the key sweep gathers before adding them up.
constexpr int64_t kRowBlock = 64;
// Multiply-adds worth a task of their own.
constexpr int64_t kTaskWork = 1 << 15;

template <typename T>
using Vec = at::vec::Vectorized<T>;

/// a . b over n elements.
template <typename T>
T dot(const T* a, const T* b, int64_t n) {
  Vec<T> sum(0);
  int64_t i = 0;
  for (; i + Vec<T>::size() <= n; i += Vec<T>::size()) {
    sum = at::vec::fmadd(Vec<T>::loadu(a + i), Vec<T>::loadu(b + i), sum);
  }
  T lanes[Vec<T>::size()];
  sum.store(lanes);
  T total = 0;
  for (int64_t l = 0; l < Vec<T>::size(); ++l) total += lanes[l];
  for (; i < n; ++i) total += a[i] * b[i];
  return total;
}

/// y += alpha * x over n elements.
template <typename T>
void axpy(T* y, T alpha, const T* x, int64_t n) {
  const Vec<T> a(alpha);
  for (int64_t i = 0; i < n; i += Vec<T>::size()) {
    const int64_t m = std::min<int64_t>(Vec<T>::size(), n - i);
    at::vec::fmadd(a, Vec<T>::loadu(x + i, m), Vec<T>::loadu(y + i, m)).store(y + i, m);
  }
}

/// y *= alpha over n elements.
template <typename T>
void scale_in_place(T* y, T alpha, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] *= alpha;
}

/// x rounded to scalar_t precision and back (what the reference's eager casts do).
template <typename scalar_t, typename acc_t>
acc_t round_to(acc_t x) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return x;
  } else {
    return static_cast<acc_t>(static_cast<scalar_t>(x));
  }
}

/// One key chunk's values in a vector-aligned buffer (its lanes past the chunk's keys unused).
template <typename T>
struct alignas(64) ChunkRow {
  T at[kKeyChunk] = {};
};

/// The [Tk, width] block of each batch row of rows [B, Tk, width], transposed into `out` [B, width,
/// stride] (stride = transposed_key_stride(Tk), attention.h) with zeros past Tk: a key chunk of it
/// is `width` rows of kKeyChunk consecutive keys, so that products with it run one key per vector
/// lane.
template <typename T>
class TransposedRows {
 public:
  TransposedRows(const T* rows, int64_t batch, int64_t keys, int64_t width, void* out)
      : width_(width), stride_(transposed_key_stride(keys)), data_(static_cast<T*>(out)) {
    at::parallel_for(0, batch * width, std::max<int64_t>(1, kTaskWork / std::max<int64_t>(1, keys)),
                     [&](int64_t begin, int64_t end) {
                       for (int64_t bw = begin; bw < end; ++bw) {
                         const int64_t b = bw / width, w = bw % width;
                         const T* column = rows + b * keys * width + w;
                         T* row = data_ + bw * stride_;
                         for (int64_t j = 0; j < keys; ++j) row[j] = column[j * width];
                         std::fill(row + keys, row + stride_, T(0));
                       }
                     });
  }

  /// Keys j0 .. j0 + kKeyChunk of batch row b (j0 a multiple of kKeyChunk): [width] rows of
  /// leading dimension stride().
  const T* chunk(int64_t b, int64_t j0) const { return width_ == 0 ? nullptr : data_ + b * width_ * stride_ + j0; }
  int64_t stride() const { return stride_; }

 private:
  int64_t width_, stride_;
  T* data_;
};

#if defined(CPU_CAPABILITY_AVX512)
constexpr int64_t kVectorRegisters = 32;
#else
constexpr int64_t kVectorRegisters = 16;
#endif

/// Query rows the dot score runs through a chunk at once: as many as keep their accumulators
/// (kKeyChunk keys per row) in half the vector registers, each chunk load then serving them all.
template <typename T>
constexpr int64_t dot_rows() {
  return std::max<int64_t>(1, kVectorRegisters / 2 / (kKeyChunk / Vec<T>::size()));
}

/// out[r].at[c] = sum_f x[r][f] * chunk[f * stride + c] for r < R, c < kKeyChunk: R rows x[r]
/// [width] against a chunk of TransposedRows, each sum over f in order in one vector lane.
template <int64_t R, typename T>
void rows_times_chunk(const T* const* x, const T* chunk, int64_t stride, int64_t width, ChunkRow<T>* out) {
  constexpr int64_t L = Vec<T>::size(), V = kKeyChunk / L;
  Vec<T> acc[R][V];
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t v = 0; v < V; ++v) acc[r][v] = Vec<T>(0);
  }
  for (int64_t f = 0; f < width; ++f) {
    const T* row = chunk + f * stride;
    Vec<T> keys[V];
    for (int64_t v = 0; v < V; ++v) keys[v] = Vec<T>::loadu(row + v * L);
    for (int64_t r = 0; r < R; ++r) {
      const Vec<T> xf(x[r][f]);
      for (int64_t v = 0; v < V; ++v) acc[r][v] = at::vec::fmadd(xf, keys[v], acc[r][v]);
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t v = 0; v < V; ++v) acc[r][v].store(out[r].at + v * L);
  }
}

/// x[c] = exp(x[c] - shift) for c < n (the lanes past n of the last vector too).
template <typename T>
void exp_shifted(ChunkRow<T>& x, T shift, int64_t n) {
  const Vec<T> s(shift);
  for (int64_t c = 0; c < n; c += Vec<T>::size()) (Vec<T>::loadu(x.at + c) - s).exp().store(x.at + c);
}

/// The largest of x.at[0, n).
template <typename T>
T chunk_max(const ChunkRow<T>& x, int64_t n) {
  constexpr int64_t L = Vec<T>::size();
  Vec<T> largest(-std::numeric_limits<T>::infinity());
  int64_t c = 0;
  for (; c + L <= n; c += L) largest = at::vec::maximum(largest, Vec<T>::loadu(x.at + c));
  T lanes[L];
  largest.store(lanes);
  T result = *std::max_element(lanes, lanes + L);
  for (; c < n; ++c) result = std::max(result, x.at[c]);
  return result;
}

/// The sum of x.at[0, n): lane-wise partial sums over whole vectors, then the lanes and the tail in
/// order.
template <typename T>
T chunk_sum(const ChunkRow<T>& x, int64_t n) {
  constexpr int64_t L = Vec<T>::size();
  Vec<T> partial(0);
  int64_t c = 0;
  for (; c + L <= n; c += L) partial = partial + Vec<T>::loadu(x.at + c);
  T lanes[L];
  partial.store(lanes);
  T result = 0;
  for (int64_t l = 0; l < L; ++l) result += lanes[l];
  for (; c < n; ++c) result += x.at[c];
  return result;
}

/// out[r][w] += sum_{c < n} weight[r][c] * rows[c * width + w] for r < R, w < width, rows [n, width]
/// contiguous: each element summed over c in order, four vectors of each out[r] in registers
/// across the rows, each row's load serving all R.
template <int64_t R, typename T>
void add_weighted_rows(T* const* out, const T* const* weight, const T* rows, int64_t n, int64_t width) {
  constexpr int64_t L = Vec<T>::size(), W = 4;
  int64_t w0 = 0;
  for (; w0 + W * L <= width; w0 += W * L) {
    Vec<T> acc[R][W];
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t v = 0; v < W; ++v) acc[r][v] = Vec<T>::loadu(out[r] + w0 + v * L);
    }
    for (int64_t c = 0; c < n; ++c) {
      const T* row = rows + c * width + w0;
      Vec<T> x[W];
      for (int64_t v = 0; v < W; ++v) x[v] = Vec<T>::loadu(row + v * L);
      for (int64_t r = 0; r < R; ++r) {
        const Vec<T> wc(weight[r][c]);
        for (int64_t v = 0; v < W; ++v) acc[r][v] = at::vec::fmadd(wc, x[v], acc[r][v]);
      }
    }
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t v = 0; v < W; ++v) acc[r][v].store(out[r] + w0 + v * L);
    }
  }
  for (; w0 < width; w0 += L) {
    const int64_t m = std::min<int64_t>(L, width - w0);
    Vec<T> acc[R];
    for (int64_t r = 0; r < R; ++r) acc[r] = Vec<T>::loadu(out[r] + w0, m);
    for (int64_t c = 0; c < n; ++c) {
      const Vec<T> x = Vec<T>::loadu(rows + c * width + w0, m);
      for (int64_t r = 0; r < R; ++r) acc[r] = at::vec::fmadd(Vec<T>(weight[r][c]), x, acc[r]);
    }
    for (int64_t r = 0; r < R; ++r) acc[r].store(out[r] + w0, m);
  }
}

/// out[c] += sum_{r < count} by_key[c * kRowBlock + r] * rows[r] for c < n, out rows [n, width] and
/// rows [count, width] contiguous: each out row summed over `rows` in order, K of them at a time
/// sharing the loads of `rows` (the key sweep's weighted sums, K = dot_rows).
template <typename T>
void add_block_to_keys(T* out, const T* by_key, const T* rows, int64_t count, int64_t n, int64_t width) {
  constexpr int64_t K = dot_rows<T>();
  int64_t c = 0;
  for (; c + K <= n; c += K) {
    T* outs[K];
    const T* weights[K];
    for (int64_t k = 0; k < K; ++k) {
      outs[k] = out + (c + k) * width;
      weights[k] = by_key + (c + k) * kRowBlock;
    }
    add_weighted_rows<K>(outs, weights, rows, count, width);
  }
  for (; c < n; ++c) {
    T* row_out = out + c * width;
    const T* weight = by_key + c * kRowBlock;
    add_weighted_rows<1>(&row_out, &weight, rows, count, width);
  }
}

/// Rows first_row .. first_row + R of a [., width] array; those past `count` repeat the last real
/// row (their results are computed and dropped, so that the kernels' R stays a constant).
template <int64_t R, typename T>
void group_rows(const T* base, int64_t first_row, int64_t count, int64_t width, const T** rows) {
  for (int64_t r = 0; r < R; ++r) rows[r] = base + (first_row + std::min(r, count - 1)) * width;
}

/// score(i, j) = v . tanh(pq_i + pk_j), one pair at a time. `hidden` [n, A] keeps
/// tanh(pq_i + pk_j) of a chunk's pairs for the gradients.
template <typename T>
struct AdditiveScore {
  static constexpr int64_t kRows = 1;  // query rows per call of chunk_scores
  const T* v;      // [A]
  const T* pq;     // [B * Tq, A]
  const T* pk;     // [B * Tk, A]
  int64_t keys;    // Tk
  int64_t features;

  int64_t hidden_per_key() const { return features; }

  T pair(const T* q, const T* k, T* hidden) const {
    Vec<T> sum(0);
    for (int64_t a = 0; a < features; a += Vec<T>::size()) {
      const int64_t m = std::min<int64_t>(Vec<T>::size(), features - a);
      const Vec<T> h = tanh_from_exp(Vec<T>::loadu(q + a, m) + Vec<T>::loadu(k + a, m));
      h.store(hidden + a, m);
      sum = at::vec::fmadd(h, Vec<T>::loadu(v + a, m), sum);  // v's loadu zero-fills the tail
    }
    T lanes[Vec<T>::size()];
    sum.store(lanes);
    T total = 0;
    for (int64_t l = 0; l < Vec<T>::size(); ++l) total += lanes[l];
    return total;
  }

  /// scores[0].at[c] = score(row, j0 + c) of batch row b for c < n.
  void chunk_scores(int64_t row, int64_t /*count*/, int64_t b, int64_t j0, int64_t n, ChunkRow<T>* scores,
                    T* hidden) const {
    const T* q = pq + row * features;
    const T* k = pk + (b * keys + j0) * features;
    for (int64_t c = 0; c < n; ++c) scores[0].at[c] = pair(q, k + c * features, hidden + c * features);
  }

  /// d_pre += ds * v * (1 - h^2): the gradient reaching pq_i (or pk_j).
  void add_pre_gradient(T ds, const T* hidden, T* d_pre) const {
    const Vec<T> d(ds), one(1);
    for (int64_t a = 0; a < features; a += Vec<T>::size()) {
      const int64_t m = std::min<int64_t>(Vec<T>::size(), features - a);
      const Vec<T> h = Vec<T>::loadu(hidden + a, m);
      const Vec<T> g = d * Vec<T>::loadu(v + a, m) * (one - h * h);
      (Vec<T>::loadu(d_pre + a, m) + g).store(d_pre + a, m);
    }
  }

  /// d_q[0] += sum_{c < n} ds[0][c] d score(row, j0 + c) / d pq_row.
  void add_query_gradients(int64_t /*b*/, int64_t /*j0*/, const ChunkRow<T>* ds, int64_t n, const T* hidden,
                           T* const* d_q) const {
    for (int64_t c = 0; c < n; ++c) add_pre_gradient(ds[0].at[c], hidden + c * features, d_q[0]);
  }

  /// d_k[c] += ds[c] d score / d pk_(j0 + c) and d_v[c] += ds[c] d score / d v for c < n, the
  /// pairs of one query row (their `hidden`), rows of A of d_k and d_v from key j0.
  void add_key_gradients_of_row(const ChunkRow<T>& ds, int64_t n, const T* hidden, T* d_k, T* d_v) const {
    for (int64_t c = 0; c < n; ++c) {
      add_pre_gradient(ds.at[c], hidden + c * features, d_k + c * features);
      axpy(d_v + c * features, ds.at[c], hidden + c * features, features);
    }
  }

  /// The dot score's: none here (the pairs' hidden is gone by the end of a block).
  void add_key_gradients_of_block(int64_t, int64_t, T*, int64_t, T*) const {}
};

/// score(i, j) = scale * q_i . k_j, kRows query rows against a chunk of the transposed keys, or
/// one pair at a time where the keys are not transposed (transposes_keys, attention.h).
template <typename T, int64_t Rows = dot_rows<T>()>
struct DotScore {
  static constexpr int64_t kRows = Rows;
  T scale;
  const T* query;     // [B * Tq, D]
  const T* keys;      // [B * Tk, D]
  int64_t key_count;  // Tk
  int64_t features;
  const TransposedRows<T>* keys_across;  // null: scores by pairs

  int64_t hidden_per_key() const { return 0; }

  /// scores[r].at[c] = score(row + r, j0 + c) for r < kRows (rows past `count` repeat the last).
  void chunk_scores(int64_t row, int64_t count, int64_t b, int64_t j0, int64_t n, ChunkRow<T>* scores,
                    T* /*hidden*/) const {
    const T* q[kRows];
    group_rows<kRows>(query, row, count, features, q);
    if (keys_across != nullptr) {
      rows_times_chunk<kRows>(q, keys_across->chunk(b, j0), keys_across->stride(), features, scores);
    } else {
      const T* k = keys + (b * key_count + j0) * features;
      for (int64_t r = 0; r < kRows; ++r) {
        for (int64_t c = 0; c < n; ++c) scores[r].at[c] = dot(q[r], k + c * features, features);
      }
    }
    for (int64_t r = 0; r < kRows; ++r) {
      for (int64_t c = 0; c < n; ++c) scores[r].at[c] *= scale;
    }
  }

  void add_query_gradients(int64_t b, int64_t j0, const ChunkRow<T>* ds, int64_t n, const T* /*hidden*/,
                           T* const* d_q) const {
    ChunkRow<T> scaled[kRows];
    const T* weights[kRows];
    for (int64_t r = 0; r < kRows; ++r) {
      for (int64_t c = 0; c < n; ++c) scaled[r].at[c] = scale * ds[r].at[c];
      weights[r] = scaled[r].at;
    }
    add_weighted_rows<kRows>(d_q, weights, keys + (b * key_count + j0) * features, n, features);
  }

  /// The additive score's: none here (a block's are added at once).
  void add_key_gradients_of_row(const ChunkRow<T>&, int64_t, const T*, T*, T*) const {}

  /// d_k[c] += scale sum_r ds_by_key[c][r] q_(first_row + r) for c < n: rows of D of d_k from key
  /// j0, against `rows` query rows from first_row (ds_by_key rows of kRowBlock, scaled here).
  void add_key_gradients_of_block(int64_t first_row, int64_t rows, T* ds_by_key, int64_t n, T* d_k) const {
    for (int64_t c = 0; c < n; ++c) {
      for (int64_t r = 0; r < rows; ++r) ds_by_key[c * kRowBlock + r] *= scale;
    }
    add_block_to_keys(d_k, ds_by_key, query + first_row * features, rows, n, features);
  }
};

/// parallel_for over `count` tasks of `work` multiply-adds each.
template <typename Body>
void parallel_tasks(int64_t count, int64_t work, const Body& body) {
  const int64_t grain = std::max<int64_t>(1, kTaskWork / std::max<int64_t>(1, work));
  at::parallel_for(0, count, grain, body);
}

/// A task's query rows: Score::kRows consecutive rows of one batch row (fewer at the end of it).
struct RowGroup {
  int64_t b, first_row, count;
};

template <int64_t R>
RowGroup row_group(int64_t task, int64_t queries) {
  const int64_t groups = (queries + R - 1) / R;
  const int64_t b = task / groups, i0 = task % groups * R;
  return {b, b * queries + i0, std::min(R, queries - i0)};
}

/// Each of a group's R output rows [width] (rows past `count` in `spare`, [R - 1, width]), zeroed.
template <int64_t R, typename T>
void zeroed_group_rows(T* base, const RowGroup& g, int64_t width, T* spare, T** rows) {
  for (int64_t r = 0; r < R; ++r) {
    rows[r] = r < g.count ? base + (g.first_row + r) * width : spare + (r - 1) * width;
    std::fill_n(rows[r], width, T(0));
  }
}

// ------------------------------------------------------------------------------------------------
// Forward: one task per group of query rows; keys in chunks of kKeyChunk with an online softmax.
// ------------------------------------------------------------------------------------------------

template <typename T, typename Score>
void forward_rows(const AttentionForward& p, const Score& score) {
  constexpr int64_t R = Score::kRows;
  const AttentionShape& s = p.shape;
  const int64_t Dv = s.value_size, Tq = s.queries, Tk = s.keys;
  const T* values = static_cast<const T*>(p.values);
  T* context = static_cast<T*>(p.context);
  T* lse_out = static_cast<T*>(p.lse);
  T* weights = static_cast<T*>(p.weights);
  const int64_t groups = s.batch * ((Tq + R - 1) / R);
  parallel_tasks(groups, R * Tk * (s.features + Dv), [&](int64_t begin, int64_t end) {
    std::vector<T> hidden(kKeyChunk * score.hidden_per_key()), spare((R - 1) * Dv);
    ChunkRow<T> chunk[R];
    const T* chunk_weights[R];
    for (int64_t r = 0; r < R; ++r) chunk_weights[r] = chunk[r].at;
    for (int64_t task = begin; task < end; ++task) {
      const RowGroup g = row_group<R>(task, Tq);
      const int64_t length = s.length(g.b);
      const T* v_b = values + g.b * Tk * Dv;
      T* ctx[R];
      zeroed_group_rows<R>(context, g, Dv, spare.data(), ctx);
      T running_max[R], total[R];
      std::fill_n(running_max, R, -std::numeric_limits<T>::infinity());
      std::fill_n(total, R, T(0));
      for (int64_t j0 = 0; j0 < length; j0 += kKeyChunk) {
        const int64_t n = std::min(kKeyChunk, length - j0);
        score.chunk_scores(g.first_row, g.count, g.b, j0, n, chunk, hidden.data());
        for (int64_t r = 0; r < R; ++r) {
          const T chunk_max = attention_detail::chunk_max(chunk[r], n);
          if (weights && r < g.count) {
            std::copy_n(chunk[r].at, n, weights + (g.first_row + r) * Tk + j0);  // scores, for now
          }
          const T new_max = std::max(running_max[r], chunk_max);
          const T rescale = std::exp(running_max[r] - new_max);  // 0 on the first chunk
          total[r] *= rescale;
          scale_in_place(ctx[r], rescale, Dv);
          exp_shifted(chunk[r], new_max, n);
          total[r] += chunk_sum(chunk[r], n);
          running_max[r] = new_max;
        }
        add_weighted_rows<R>(ctx, chunk_weights, v_b + j0 * Dv, n, Dv);
      }
      for (int64_t r = 0; r < g.count; ++r) {
        const int64_t row = g.first_row + r;
        scale_in_place(ctx[r], T(1) / total[r], Dv);
        const T lse = running_max[r] + std::log(total[r]);
        lse_out[row] = lse;
        if (weights) {
          T* w = weights + row * Tk;
          for (int64_t j = 0; j < length; ++j) w[j] = std::exp(w[j] - lse);
          std::fill(w + length, w + Tk, T(0));
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------
// Backward. With P = exp(score - lse), dP = grad_context_i . values_j (+ grad_weights_ij),
// delta_i = sum_j P_ij dP_ij and dS = P (dP - delta):
//   d_query_i = sum_j dS_ij d score/d q_i,  d_keys_j = sum_i dS_ij d score/d k_j,
//   d_values_j = sum_i P_ij grad_context_i.
// ------------------------------------------------------------------------------------------------

/// delta [B * Tq] = grad_context . context (+ grad_weights . weights), into `delta`.
template <typename T>
void softmax_deltas(const AttentionBackward& p, T* delta) {
  const AttentionShape& s = p.shape;
  const int64_t Dv = s.value_size, Tk = s.keys;
  const T* grad_context = static_cast<const T*>(p.grad_context);
  const T* context = static_cast<const T*>(p.context);
  const T* grad_weights = static_cast<const T*>(p.grad_weights);
  const T* weights = static_cast<const T*>(p.weights);
  parallel_tasks(s.batch * s.queries, Dv + Tk, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      T d = dot(grad_context + row * Dv, context + row * Dv, Dv);
      if (grad_weights) d += dot(grad_weights + row * Tk, weights + row * Tk, Tk);
      delta[row] = d;
    }
  });
}

/// The recomputed pieces of a group of Score::kRows query rows against one key chunk.
template <typename scalar_t, typename T, typename Score>
struct ChunkGradient {
  static constexpr int64_t R = Score::kRows;
  const AttentionBackward& p;
  const Score& score;
  const T* delta;
  const TransposedRows<T>* values_across;  // null: grad_context . values by pairs

  /// weight[r].at[c] = P and ds[r].at[c] = dS of query row first_row + r (of batch row b) and key
  /// j0 + c, for r < count, c < n (rows past count repeat the last); fills `hidden` (the score's).
  void operator()(int64_t first_row, int64_t count, int64_t b, int64_t j0, int64_t n, ChunkRow<T>* weight,
                  ChunkRow<T>* ds, T* hidden) const {
    const AttentionShape& s = p.shape;
    const T* lse = static_cast<const T*>(p.lse);
    score.chunk_scores(first_row, count, b, j0, n, weight, hidden);
    const T* grad_context[R];
    group_rows<R>(static_cast<const T*>(p.grad_context), first_row, count, s.value_size, grad_context);
    if (values_across != nullptr) {  // dP without grad_weights
      rows_times_chunk<R>(grad_context, values_across->chunk(b, j0), values_across->stride(), s.value_size, ds);
    } else {
      const T* values = static_cast<const T*>(p.values) + (b * s.keys + j0) * s.value_size;
      for (int64_t r = 0; r < R; ++r) {
        for (int64_t c = 0; c < n; ++c) ds[r].at[c] = dot(grad_context[r], values + c * s.value_size, s.value_size);
      }
    }
    for (int64_t r = 0; r < R; ++r) {
      const int64_t row = first_row + std::min(r, count - 1);
      exp_shifted(weight[r], lse[row], n);
      const T* grad_weights = p.grad_weights ? static_cast<const T*>(p.grad_weights) + row * s.keys + j0 : nullptr;
      for (int64_t c = 0; c < n; ++c) {
        const T d_weight = grad_weights ? ds[r].at[c] + grad_weights[c] : ds[r].at[c];
        ds[r].at[c] = round_to<scalar_t>(weight[r].at[c] * (d_weight - delta[row]));
      }
    }
  }
};

template <typename scalar_t, typename T, typename Score>
void query_gradients(const AttentionBackward& p, const Score& score, const ChunkGradient<scalar_t, T, Score>& pairs) {
  constexpr int64_t R = Score::kRows;
  const AttentionShape& s = p.shape;
  const int64_t F = s.features, Tq = s.queries;
  T* d_query = static_cast<T*>(p.d_query);
  const int64_t groups = s.batch * ((Tq + R - 1) / R);
  parallel_tasks(groups, R * s.keys * (2 * F + s.value_size), [&](int64_t begin, int64_t end) {
    std::vector<T> hidden(kKeyChunk * score.hidden_per_key()), spare((R - 1) * F);
    ChunkRow<T> weight[R], ds[R];
    for (int64_t task = begin; task < end; ++task) {
      const RowGroup g = row_group<R>(task, Tq);
      const int64_t length = s.length(g.b);
      T* d_q[R];
      zeroed_group_rows<R>(d_query, g, F, spare.data(), d_q);
      for (int64_t j0 = 0; j0 < length; j0 += kKeyChunk) {
        const int64_t n = std::min(kKeyChunk, length - j0);
        pairs(g.first_row, g.count, g.b, j0, n, weight, ds, hidden.data());
        score.add_query_gradients(g.b, j0, ds, n, hidden.data(), d_q);
      }
    }
  });
}

/// One task per chunk of kKeyChunk keys of one batch row. The weights and score gradients of a
/// block of kRowBlock query rows against the chunk are gathered by key, then each key's gradients
/// add up the block's rows with the key's row held in registers: each key's gradients are sums
/// over the query rows in order, whatever the thread count.
template <typename scalar_t, typename T, typename Score>
void key_gradients(const AttentionBackward& p, const Score& score, const ChunkGradient<scalar_t, T, Score>& pairs) {
  constexpr int64_t R = Score::kRows;
  static_assert(kRowBlock % R == 0, "a block of query rows is whole groups");
  const AttentionShape& s = p.shape;
  const int64_t F = s.features, Dv = s.value_size, Tq = s.queries, Tk = s.keys;
  const int64_t chunks = (Tk + kKeyChunk - 1) / kKeyChunk;
  const T* grad_context = static_cast<const T*>(p.grad_context);
  T* d_keys = static_cast<T*>(p.d_keys);
  T* d_v_rows = static_cast<T*>(p.d_v_rows);
  T* d_values = static_cast<T*>(p.d_values);
  parallel_tasks(s.batch * chunks, Tq * kKeyChunk * (2 * F + 2 * Dv), [&](int64_t begin, int64_t end) {
    std::vector<T> hidden(kKeyChunk * score.hidden_per_key());
    std::vector<T> weight_by_key(kKeyChunk * kRowBlock), ds_by_key(kKeyChunk * kRowBlock);
    ChunkRow<T> weight[R], ds[R];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks, j0 = task % chunks * kKeyChunk;
      const int64_t first = b * Tk + j0, rows = std::min(kKeyChunk, Tk - j0);
      T* d_k = d_keys + first * F;
      T* d_val = d_values + first * Dv;
      T* d_v = d_v_rows ? d_v_rows + first * F : nullptr;
      std::fill_n(d_k, rows * F, T(0));
      std::fill_n(d_val, rows * Dv, T(0));
      if (d_v) std::fill_n(d_v, rows * F, T(0));
      const int64_t n = std::clamp<int64_t>(s.length(b) - j0, 0, rows);  // masked keys: zero gradients
      if (n == 0) continue;
      for (int64_t i0 = 0; i0 < Tq; i0 += kRowBlock) {
        const int64_t block = std::min(kRowBlock, Tq - i0), first_row = b * Tq + i0;
        for (int64_t r0 = 0; r0 < block; r0 += R) {
          const int64_t count = std::min(R, block - r0);
          pairs(first_row + r0, count, b, j0, n, weight, ds, hidden.data());
          for (int64_t r = 0; r < count; ++r) {
            score.add_key_gradients_of_row(ds[r], n, hidden.data(), d_k, d_v);
            for (int64_t c = 0; c < n; ++c) {
              weight_by_key[c * kRowBlock + r0 + r] = round_to<scalar_t>(weight[r].at[c]);
              ds_by_key[c * kRowBlock + r0 + r] = ds[r].at[c];
            }
          }
        }
        add_block_to_keys(d_val, weight_by_key.data(), grad_context + first_row * Dv, block, n, Dv);
        score.add_key_gradients_of_block(first_row, block, ds_by_key.data(), n, d_k);
      }
    }
  });
}

template <typename scalar_t, typename Score>
void backward_with(const AttentionBackward& p, const Score& score) {
  using T = at::opmath_type<scalar_t>;
  const AttentionShape& s = p.shape;
  std::vector<T> delta(s.batch * s.queries);
  softmax_deltas<T>(p, delta.data());
  std::optional<TransposedRows<T>> values_across;
  if (p.values_across != nullptr) values_across.emplace(static_cast<const T*>(p.values), s.batch, s.keys, s.value_size,
                                                p.values_across);
  const ChunkGradient<scalar_t, T, Score> pairs{p, score, delta.data(), values_across ? &*values_across : nullptr};
  query_gradients<scalar_t, T>(p, score, pairs);
  key_gradients<scalar_t, T>(p, score, pairs);
}

/// run(score) with the dot score of these queries: dot_rows<T>() rows a group, or one where there
/// are fewer queries (a decoder step's Tq = 1), whose groups would be mostly repeated rows; the
/// keys transposed where the caller gave scratch for them (transposes_keys, attention.h).
template <typename T, typename Run>
void with_dot_score(const AttentionShape& s, double scale, const void* query, const void* keys, void* keys_across,
                    const Run& run) {
  const T* q = static_cast<const T*>(query);
  const T* k = static_cast<const T*>(keys);
  std::optional<TransposedRows<T>> across;
  if (keys_across != nullptr) across.emplace(k, s.batch, s.keys, s.features, keys_across);
  if (across) {
    run(DotScore<T>{static_cast<T>(scale), q, k, s.keys, s.features, &*across});
  } else {
    run(DotScore<T, 1>{static_cast<T>(scale), q, k, s.keys, s.features, nullptr});
  }
}

template <typename scalar_t>
void forward(const AttentionForward& p) {
  using T = at::opmath_type<scalar_t>;
  const AttentionShape& s = p.shape;
  if (p.score == AttentionScore::kAdditive) {
    forward_rows<T>(p, AdditiveScore<T>{static_cast<const T*>(p.v), static_cast<const T*>(p.query),
                                        static_cast<const T*>(p.keys), s.keys, s.features});
  } else {
    with_dot_score<T>(s, p.scale, p.query, p.keys, p.keys_across,
                      [&](const auto& score) { forward_rows<T>(p, score); });
  }
}

template <typename scalar_t>
void backward(const AttentionBackward& p) {
  using T = at::opmath_type<scalar_t>;
  const AttentionShape& s = p.shape;
  if (p.score == AttentionScore::kAdditive) {
    backward_with<scalar_t>(p, AdditiveScore<T>{static_cast<const T*>(p.v), static_cast<const T*>(p.query),
                                                static_cast<const T*>(p.keys), s.keys, s.features});
  } else {
    with_dot_score<T>(s, p.scale, p.query, p.keys, p.keys_across,
                      [&](const auto& score) { backward_with<scalar_t>(p, score); });
  }
}

}  // namespace attention_detail

#define FUSED_RNN_ATTENTION_DISPATCH(Params, kernel)                                            \
  [](const Params& p) {                                                                         \
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, p.dtype, #kernel,                 \
                                    [&] { attention_detail::kernel<scalar_t>(p); });            \
  }

const AttentionKernels attention = {
    CPU_CAPABILITY_NAME,
    FUSED_RNN_ATTENTION_DISPATCH(AttentionForward, forward),
    FUSED_RNN_ATTENTION_DISPATCH(AttentionBackward, backward),
};

#undef FUSED_RNN_ATTENTION_DISPATCH

}  // namespace fused_rnn::cpu::CPU_CAPABILITY
