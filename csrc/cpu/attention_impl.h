// The attention kernels declared in attention.h, written once with at::vec::Vectorized and
// compiled once per CPU capability. The including file defines CPU_CAPABILITY (the namespace the
// kernels land in) and, for a vector ISA, CPU_CAPABILITY_<ISA> and the matching target options.
//
// Stages: forward_rows (online softmax over key chunks, one task per query row), then for the
// backward softmax_deltas, query_gradients (one task per query row) and key_gradients (one task
// per chunk of keys). A score policy (AdditiveScore, DotScore) supplies the scores of one query
// row against a chunk of keys and their gradients. Products that run over a chunk's keys (the dot
// scores, grad_context . values) read the keys or values transposed (TransposedRows), one key per
// vector lane, instead of one dot product and its horizontal sum per pair.
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
#include <type_traits>
#include <utility>
#include <vector>

#include "attention.h"

namespace fused_rnn::cpu::CPU_CAPABILITY {

#include "vec_tanh.h"

namespace attention_detail {

// Keys scored together before one online-softmax update, and the keys of one task of the key
// sweep. A multiple of every vector size: a chunk of a TransposedRows block is whole vectors.
constexpr int64_t kKeyChunk = 64;
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

/// The [Tk, width] block of each batch row of rows [B, Tk, width], transposed to [width, stride]
/// with stride = Tk rounded up to kKeyChunk and zeros past Tk: a key chunk of it is `width` rows of
/// kKeyChunk consecutive keys, so that products with it run one key per vector lane.
template <typename T>
class TransposedRows {
 public:
  TransposedRows(const T* rows, int64_t batch, int64_t keys, int64_t width)
      : width_(width),
        stride_((keys + kKeyChunk - 1) / kKeyChunk * kKeyChunk),
        data_(static_cast<size_t>(batch * width * stride_)) {
    at::parallel_for(0, batch * width, std::max<int64_t>(1, kTaskWork / std::max<int64_t>(1, keys)),
                     [&](int64_t begin, int64_t end) {
                       for (int64_t bw = begin; bw < end; ++bw) {
                         const int64_t b = bw / width, w = bw % width;
                         const T* column = rows + b * keys * width + w;
                         T* out = data_.data() + bw * stride_;
                         for (int64_t j = 0; j < keys; ++j) out[j] = column[j * width];
                         std::fill(out + keys, out + stride_, T(0));
                       }
                     });
  }

  /// Keys j0 .. j0 + kKeyChunk of batch row b (j0 a multiple of kKeyChunk): [width] rows of
  /// leading dimension stride().
  const T* chunk(int64_t b, int64_t j0) const {
    return width_ == 0 ? nullptr : data_.data() + b * width_ * stride_ + j0;
  }
  int64_t stride() const { return stride_; }

 private:
  int64_t width_, stride_;
  std::vector<T> data_;
};

/// out[c] = sum_f x[f] * chunk[f * stride + c] for every c < kKeyChunk: x [width] against a chunk
/// of TransposedRows, each sum over f in order in one vector lane.
template <typename T>
void row_times_chunk(const T* x, const T* chunk, int64_t stride, int64_t width, ChunkRow<T>& out) {
  constexpr int64_t L = Vec<T>::size(), V = kKeyChunk / L;
  Vec<T> acc[V];
  for (int64_t v = 0; v < V; ++v) acc[v] = Vec<T>(0);
  for (int64_t f = 0; f < width; ++f) {
    const Vec<T> xf(x[f]);
    const T* row = chunk + f * stride;
    for (int64_t v = 0; v < V; ++v) acc[v] = at::vec::fmadd(xf, Vec<T>::loadu(row + v * L), acc[v]);
  }
  for (int64_t v = 0; v < V; ++v) acc[v].store(out.at + v * L);
}

/// x[c] = exp(x[c] - shift) for c < n (the lanes past n of the last vector too).
template <typename T>
void exp_shifted(ChunkRow<T>& x, T shift, int64_t n) {
  const Vec<T> s(shift);
  for (int64_t c = 0; c < n; c += Vec<T>::size()) (Vec<T>::loadu(x.at + c) - s).exp().store(x.at + c);
}

/// out [width] += sum_{c < n} weight[c] * rows[c] for rows [n, width], contiguous: each element
/// summed over c in order, four vectors of out held in registers across the rows.
template <typename T>
void add_weighted_rows(T* out, const T* weight, const T* rows, int64_t n, int64_t width) {
  constexpr int64_t L = Vec<T>::size();
  int64_t w0 = 0;
  for (; w0 + 4 * L <= width; w0 += 4 * L) {
    Vec<T> a0 = Vec<T>::loadu(out + w0), a1 = Vec<T>::loadu(out + w0 + L);
    Vec<T> a2 = Vec<T>::loadu(out + w0 + 2 * L), a3 = Vec<T>::loadu(out + w0 + 3 * L);
    for (int64_t c = 0; c < n; ++c) {
      const Vec<T> wc(weight[c]);
      const T* row = rows + c * width + w0;
      a0 = at::vec::fmadd(wc, Vec<T>::loadu(row), a0);
      a1 = at::vec::fmadd(wc, Vec<T>::loadu(row + L), a1);
      a2 = at::vec::fmadd(wc, Vec<T>::loadu(row + 2 * L), a2);
      a3 = at::vec::fmadd(wc, Vec<T>::loadu(row + 3 * L), a3);
    }
    a0.store(out + w0);
    a1.store(out + w0 + L);
    a2.store(out + w0 + 2 * L);
    a3.store(out + w0 + 3 * L);
  }
  for (; w0 < width; w0 += L) {
    const int64_t m = std::min<int64_t>(L, width - w0);
    Vec<T> a = Vec<T>::loadu(out + w0, m);
    for (int64_t c = 0; c < n; ++c) a = at::vec::fmadd(Vec<T>(weight[c]), Vec<T>::loadu(rows + c * width + w0, m), a);
    a.store(out + w0, m);
  }
}

/// score(i, j) = v . tanh(pq_i + pk_j), one pair at a time. `hidden` [n, A] keeps
/// tanh(pq_i + pk_j) of a chunk's pairs for the gradients.
template <typename T>
struct AdditiveScore {
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

  /// scores[c] = score(row, j0 + c) of batch row b for c < n.
  void chunk_scores(int64_t row, int64_t b, int64_t j0, int64_t n, ChunkRow<T>& scores, T* hidden) const {
    const T* q = pq + row * features;
    const T* k = pk + (b * keys + j0) * features;
    for (int64_t c = 0; c < n; ++c) scores.at[c] = pair(q, k + c * features, hidden + c * features);
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

  /// d_q += sum_{c < n} ds[c] d score(row, j0 + c) / d pq_row.
  void add_query_gradients(int64_t /*b*/, int64_t /*j0*/, const ChunkRow<T>& ds, int64_t n, const T* hidden,
                           T* d_q) const {
    for (int64_t c = 0; c < n; ++c) add_pre_gradient(ds.at[c], hidden + c * features, d_q);
  }

  /// d_k += ds d score / d pk_j and d_v += ds d score / d v for one pair (its `hidden`).
  void add_key_gradient(T ds, int64_t /*row*/, const T* hidden, T* d_k, T* d_v) const {
    add_pre_gradient(ds, hidden, d_k);
    axpy(d_v, ds, hidden, features);
  }
};

/// score(i, j) = scale * q_i . k_j, a chunk of keys at a time from the transposed keys.
template <typename T>
struct DotScore {
  T scale;
  const T* query;  // [B * Tq, D]
  const T* keys;   // [B * Tk, D]
  int64_t key_count;  // Tk
  int64_t features;
  const TransposedRows<T>& keys_across;

  int64_t hidden_per_key() const { return 0; }

  void chunk_scores(int64_t row, int64_t b, int64_t j0, int64_t n, ChunkRow<T>& scores, T* /*hidden*/) const {
    row_times_chunk(query + row * features, keys_across.chunk(b, j0), keys_across.stride(), features, scores);
    for (int64_t c = 0; c < n; ++c) scores.at[c] *= scale;
  }

  void add_query_gradients(int64_t b, int64_t j0, const ChunkRow<T>& ds, int64_t n, const T* /*hidden*/,
                           T* d_q) const {
    ChunkRow<T> scaled;
    for (int64_t c = 0; c < n; ++c) scaled.at[c] = scale * ds.at[c];
    add_weighted_rows(d_q, scaled.at, keys + (b * key_count + j0) * features, n, features);
  }

  void add_key_gradient(T ds, int64_t row, const T* /*hidden*/, T* d_k, T* /*d_v*/) const {
    axpy(d_k, scale * ds, query + row * features, features);
  }
};

/// parallel_for over `count` tasks of `work` multiply-adds each.
template <typename Body>
void parallel_tasks(int64_t count, int64_t work, const Body& body) {
  const int64_t grain = std::max<int64_t>(1, kTaskWork / std::max<int64_t>(1, work));
  at::parallel_for(0, count, grain, body);
}

// ------------------------------------------------------------------------------------------------
// Forward: one task per query row (b, i); keys in chunks of kKeyChunk with an online softmax.
// ------------------------------------------------------------------------------------------------

template <typename T, typename Score>
void forward_rows(const AttentionForward& p, const Score& score) {
  const AttentionShape& s = p.shape;
  const int64_t Dv = s.value_size, Tq = s.queries, Tk = s.keys;
  const T* values = static_cast<const T*>(p.values);
  T* context = static_cast<T*>(p.context);
  T* lse_out = static_cast<T*>(p.lse);
  T* weights = static_cast<T*>(p.weights);
  parallel_tasks(s.batch * Tq, Tk * (s.features + Dv), [&](int64_t begin, int64_t end) {
    std::vector<T> hidden(kKeyChunk * score.hidden_per_key());
    ChunkRow<T> chunk;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / Tq, length = s.length(b);
      const T* v_b = values + b * Tk * Dv;
      T* ctx = context + row * Dv;
      std::fill_n(ctx, Dv, T(0));
      T running_max = -std::numeric_limits<T>::infinity(), total = 0;
      for (int64_t j0 = 0; j0 < length; j0 += kKeyChunk) {
        const int64_t n = std::min(kKeyChunk, length - j0);
        score.chunk_scores(row, b, j0, n, chunk, hidden.data());
        const T chunk_max = *std::max_element(chunk.at, chunk.at + n);
        if (weights) std::copy_n(chunk.at, n, weights + row * Tk + j0);  // scores, for now
        const T new_max = std::max(running_max, chunk_max);
        const T rescale = std::exp(running_max - new_max);  // 0 on the first chunk
        total *= rescale;
        scale_in_place(ctx, rescale, Dv);
        exp_shifted(chunk, new_max, n);
        for (int64_t c = 0; c < n; ++c) total += chunk.at[c];
        add_weighted_rows(ctx, chunk.at, v_b + j0 * Dv, n, Dv);
        running_max = new_max;
      }
      scale_in_place(ctx, T(1) / total, Dv);
      const T lse = running_max + std::log(total);
      lse_out[row] = lse;
      if (weights) {
        T* w = weights + row * Tk;
        for (int64_t j = 0; j < length; ++j) w[j] = std::exp(w[j] - lse);
        std::fill(w + length, w + Tk, T(0));
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

/// The recomputed pieces of one query row against one key chunk.
template <typename scalar_t, typename T, typename Score>
struct ChunkGradient {
  const AttentionBackward& p;
  const Score& score;
  const T* delta;
  const TransposedRows<T>& values_across;

  /// weight[c] = P and ds[c] = dS of query row `row` (= b * Tq + i) and key j0 + c of batch row
  /// b, for c < n; fills `hidden` (the score's, per key).
  void operator()(int64_t row, int64_t b, int64_t j0, int64_t n, ChunkRow<T>& weight, ChunkRow<T>& ds,
                  T* hidden) const {
    const AttentionShape& s = p.shape;
    score.chunk_scores(row, b, j0, n, weight, hidden);
    exp_shifted(weight, static_cast<const T*>(p.lse)[row], n);
    row_times_chunk(static_cast<const T*>(p.grad_context) + row * s.value_size, values_across.chunk(b, j0),
                    values_across.stride(), s.value_size, ds);  // dP without grad_weights
    const T* grad_weights = p.grad_weights ? static_cast<const T*>(p.grad_weights) + row * s.keys + j0 : nullptr;
    for (int64_t c = 0; c < n; ++c) {
      const T d_weight = grad_weights ? ds.at[c] + grad_weights[c] : ds.at[c];
      ds.at[c] = round_to<scalar_t>(weight.at[c] * (d_weight - delta[row]));
    }
  }
};

template <typename scalar_t, typename T, typename Score>
void query_gradients(const AttentionBackward& p, const Score& score, const ChunkGradient<scalar_t, T, Score>& pairs) {
  const AttentionShape& s = p.shape;
  const int64_t F = s.features, Tq = s.queries;
  T* d_query = static_cast<T*>(p.d_query);
  parallel_tasks(s.batch * Tq, s.keys * (2 * F + s.value_size), [&](int64_t begin, int64_t end) {
    std::vector<T> hidden(kKeyChunk * score.hidden_per_key());
    ChunkRow<T> weight, ds;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / Tq, length = s.length(b);
      T* d_q = d_query + row * F;
      std::fill_n(d_q, F, T(0));
      for (int64_t j0 = 0; j0 < length; j0 += kKeyChunk) {
        const int64_t n = std::min(kKeyChunk, length - j0);
        pairs(row, b, j0, n, weight, ds, hidden.data());
        score.add_query_gradients(b, j0, ds, n, hidden.data(), d_q);
      }
    }
  });
}

/// One task per chunk of kKeyChunk keys of one batch row, its query rows in order: each key's
/// gradients are sums over the query rows in order, whatever the thread count.
template <typename scalar_t, typename T, typename Score>
void key_gradients(const AttentionBackward& p, const Score& score, const ChunkGradient<scalar_t, T, Score>& pairs) {
  const AttentionShape& s = p.shape;
  const int64_t F = s.features, Dv = s.value_size, Tq = s.queries, Tk = s.keys;
  const int64_t chunks = (Tk + kKeyChunk - 1) / kKeyChunk;
  const T* grad_context = static_cast<const T*>(p.grad_context);
  T* d_keys = static_cast<T*>(p.d_keys);
  T* d_v_rows = static_cast<T*>(p.d_v_rows);
  T* d_values = static_cast<T*>(p.d_values);
  parallel_tasks(s.batch * chunks, Tq * kKeyChunk * (2 * F + 2 * Dv), [&](int64_t begin, int64_t end) {
    std::vector<T> hidden(kKeyChunk * score.hidden_per_key());
    ChunkRow<T> weight, ds;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks, j0 = task % chunks * kKeyChunk;
      const int64_t first = b * Tk + j0, rows = std::min(kKeyChunk, Tk - j0);
      std::fill_n(d_keys + first * F, rows * F, T(0));
      std::fill_n(d_values + first * Dv, rows * Dv, T(0));
      if (d_v_rows) std::fill_n(d_v_rows + first * F, rows * F, T(0));
      const int64_t n = std::clamp<int64_t>(s.length(b) - j0, 0, rows);  // masked keys: zero gradients
      if (n == 0) continue;
      for (int64_t i = 0; i < Tq; ++i) {
        const int64_t row = b * Tq + i;
        pairs(row, b, j0, n, weight, ds, hidden.data());
        for (int64_t c = 0; c < n; ++c) {
          const int64_t key_row = first + c;
          axpy(d_values + key_row * Dv, round_to<scalar_t>(weight.at[c]), grad_context + row * Dv, Dv);
          score.add_key_gradient(ds.at[c], row, hidden.data() + c * score.hidden_per_key(), d_keys + key_row * F,
                                 d_v_rows ? d_v_rows + key_row * F : nullptr);
        }
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
  const TransposedRows<T> values_across(static_cast<const T*>(p.values), s.batch, s.keys, s.value_size);
  const ChunkGradient<scalar_t, T, Score> pairs{p, score, delta.data(), values_across};
  query_gradients<scalar_t, T>(p, score, pairs);
  key_gradients<scalar_t, T>(p, score, pairs);
}

template <typename scalar_t>
void forward(const AttentionForward& p) {
  using T = at::opmath_type<scalar_t>;
  const AttentionShape& s = p.shape;
  const T* query = static_cast<const T*>(p.query);
  const T* keys = static_cast<const T*>(p.keys);
  if (p.score == AttentionScore::kAdditive) {
    forward_rows<T>(p, AdditiveScore<T>{static_cast<const T*>(p.v), query, keys, s.keys, s.features});
  } else {
    const TransposedRows<T> keys_across(keys, s.batch, s.keys, s.features);
    forward_rows<T>(p, DotScore<T>{static_cast<T>(p.scale), query, keys, s.keys, s.features, keys_across});
  }
}

template <typename scalar_t>
void backward(const AttentionBackward& p) {
  using T = at::opmath_type<scalar_t>;
  const AttentionShape& s = p.shape;
  const T* query = static_cast<const T*>(p.query);
  const T* keys = static_cast<const T*>(p.keys);
  if (p.score == AttentionScore::kAdditive) {
    backward_with<scalar_t>(p, AdditiveScore<T>{static_cast<const T*>(p.v), query, keys, s.keys, s.features});
  } else {
    const TransposedRows<T> keys_across(keys, s.batch, s.keys, s.features);
    backward_with<scalar_t>(p, DotScore<T>{static_cast<T>(p.scale), query, keys, s.keys, s.features, keys_across});
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
