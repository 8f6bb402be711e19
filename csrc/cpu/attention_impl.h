// The attention kernels declared in attention.h, written once with at::vec::Vectorized and
// compiled once per CPU capability. The including file defines CPU_CAPABILITY (the namespace the
// kernels land in) and, for a vector ISA, CPU_CAPABILITY_<ISA> and the matching target options.
//
// Stages: forward_rows (online softmax over key chunks, one task per query row), then for the
// backward softmax_deltas, query_gradients (one task per query row) and key_gradients (one task
// per key row). A score policy (AdditiveScore, DotScore) supplies the score of one (query, key)
// pair and its gradient.
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

// Keys scored together before one online-softmax update.
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

/// score(i, j) = v . tanh(pq_i + pk_j). `hidden` [A] keeps tanh(pq_i + pk_j) for the gradient.
template <typename T>
struct AdditiveScore {
  const T* v;
  int64_t features;

  T score(const T* q, const T* k, T* hidden) const {
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

  void add_query_gradient(T ds, const T* /*q*/, const T* /*k*/, const T* hidden, T* d_q) const {
    add_pre_gradient(ds, hidden, d_q);
  }

  void add_key_gradient(T ds, const T* /*q*/, const T* /*k*/, const T* hidden, T* d_k, T* d_v) const {
    add_pre_gradient(ds, hidden, d_k);
    axpy(d_v, ds, hidden, features);
  }
};

/// score(i, j) = scale * q_i . k_j.
template <typename T>
struct DotScore {
  T scale;
  int64_t features;

  T score(const T* q, const T* k, T* /*hidden*/) const { return scale * dot(q, k, features); }

  void add_query_gradient(T ds, const T* /*q*/, const T* k, const T* /*hidden*/, T* d_q) const {
    axpy(d_q, scale * ds, k, features);
  }

  void add_key_gradient(T ds, const T* q, const T* /*k*/, const T* /*hidden*/, T* d_k, T* /*d_v*/) const {
    axpy(d_k, scale * ds, q, features);
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
  const int64_t F = s.features, Dv = s.value_size, Tq = s.queries, Tk = s.keys;
  const T* query = static_cast<const T*>(p.query);
  const T* keys = static_cast<const T*>(p.keys);
  const T* values = static_cast<const T*>(p.values);
  T* context = static_cast<T*>(p.context);
  T* lse_out = static_cast<T*>(p.lse);
  T* weights = static_cast<T*>(p.weights);
  parallel_tasks(s.batch * Tq, Tk * (F + Dv), [&](int64_t begin, int64_t end) {
    std::vector<T> hidden(F), chunk(kKeyChunk);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / Tq, length = s.length(b);
      const T* q = query + row * F;
      const T* k_b = keys + b * Tk * F;
      const T* v_b = values + b * Tk * Dv;
      T* ctx = context + row * Dv;
      std::fill_n(ctx, Dv, T(0));
      T running_max = -std::numeric_limits<T>::infinity(), total = 0;
      for (int64_t j0 = 0; j0 < length; j0 += kKeyChunk) {
        const int64_t n = std::min(kKeyChunk, length - j0);
        T chunk_max = -std::numeric_limits<T>::infinity();
        for (int64_t c = 0; c < n; ++c) {
          chunk[c] = score.score(q, k_b + (j0 + c) * F, hidden.data());
          chunk_max = std::max(chunk_max, chunk[c]);
        }
        if (weights) std::copy_n(chunk.data(), n, weights + row * Tk + j0);  // scores, for now
        const T new_max = std::max(running_max, chunk_max);
        const T rescale = std::exp(running_max - new_max);  // 0 on the first chunk
        total *= rescale;
        scale_in_place(ctx, rescale, Dv);
        for (int64_t c = 0; c < n; ++c) {
          const T e = std::exp(chunk[c] - new_max);
          total += e;
          axpy(ctx, e, v_b + (j0 + c) * Dv, Dv);
        }
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

/// The recomputed pieces of one (query row, key) pair.
template <typename scalar_t, typename T, typename Score>
struct PairGradient {
  const AttentionBackward& p;
  const Score& score;
  const T* delta;

  /// (P_ij, dS_ij) for query row `row` (= b * Tq + i) and key j of batch row b; fills `hidden`.
  std::pair<T, T> operator()(int64_t row, int64_t b, int64_t j, T* hidden) const {
    const AttentionShape& s = p.shape;
    const T* q = static_cast<const T*>(p.query) + row * s.features;
    const T* k = static_cast<const T*>(p.keys) + (b * s.keys + j) * s.features;
    const T* values_j = static_cast<const T*>(p.values) + (b * s.keys + j) * s.value_size;
    const T* grad_context_i = static_cast<const T*>(p.grad_context) + row * s.value_size;
    const T lse = static_cast<const T*>(p.lse)[row];
    const T weight = std::exp(score.score(q, k, hidden) - lse);
    T d_weight = dot(grad_context_i, values_j, s.value_size);
    if (p.grad_weights) d_weight += static_cast<const T*>(p.grad_weights)[row * s.keys + j];
    return {weight, round_to<scalar_t>(weight * (d_weight - delta[row]))};
  }
};

template <typename scalar_t, typename T, typename Score>
void query_gradients(const AttentionBackward& p, const Score& score, const T* delta) {
  const AttentionShape& s = p.shape;
  const int64_t F = s.features, Tq = s.queries, Tk = s.keys;
  const PairGradient<scalar_t, T, Score> pair{p, score, delta};
  const T* query = static_cast<const T*>(p.query);
  const T* keys = static_cast<const T*>(p.keys);
  T* d_query = static_cast<T*>(p.d_query);
  parallel_tasks(s.batch * Tq, Tk * (2 * F + s.value_size), [&](int64_t begin, int64_t end) {
    std::vector<T> hidden(F);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / Tq;
      T* d_q = d_query + row * F;
      std::fill_n(d_q, F, T(0));
      for (int64_t j = 0; j < s.length(b); ++j) {
        const T ds = pair(row, b, j, hidden.data()).second;
        score.add_query_gradient(ds, query + row * F, keys + (b * Tk + j) * F, hidden.data(), d_q);
      }
    }
  });
}

template <typename scalar_t, typename T, typename Score>
void key_gradients(const AttentionBackward& p, const Score& score, const T* delta) {
  const AttentionShape& s = p.shape;
  const int64_t F = s.features, Dv = s.value_size, Tq = s.queries, Tk = s.keys;
  const PairGradient<scalar_t, T, Score> pair{p, score, delta};
  const T* query = static_cast<const T*>(p.query);
  const T* keys = static_cast<const T*>(p.keys);
  const T* grad_context = static_cast<const T*>(p.grad_context);
  T* d_keys = static_cast<T*>(p.d_keys);
  T* d_v_rows = static_cast<T*>(p.d_v_rows);
  T* d_values = static_cast<T*>(p.d_values);
  parallel_tasks(s.batch * Tk, Tq * (2 * F + 2 * Dv), [&](int64_t begin, int64_t end) {
    std::vector<T> hidden(F);
    for (int64_t key_row = begin; key_row < end; ++key_row) {
      const int64_t b = key_row / Tk, j = key_row % Tk;
      T* d_k = d_keys + key_row * F;
      T* d_val = d_values + key_row * Dv;
      T* d_v = d_v_rows ? d_v_rows + key_row * F : nullptr;
      std::fill_n(d_k, F, T(0));
      std::fill_n(d_val, Dv, T(0));
      if (d_v) std::fill_n(d_v, F, T(0));
      if (j >= s.length(b)) continue;  // a masked key has zero weight: zero gradients
      for (int64_t i = 0; i < Tq; ++i) {
        const int64_t row = b * Tq + i;
        const auto [weight, ds] = pair(row, b, j, hidden.data());
        axpy(d_val, round_to<scalar_t>(weight), grad_context + row * Dv, Dv);
        score.add_key_gradient(ds, query + row * F, keys + key_row * F, hidden.data(), d_k, d_v);
      }
    }
  });
}

template <typename scalar_t, typename Score>
void backward_with(const AttentionBackward& p, const Score& score) {
  using T = at::opmath_type<scalar_t>;
  std::vector<T> delta(p.shape.batch * p.shape.queries);
  softmax_deltas<T>(p, delta.data());
  query_gradients<scalar_t, T>(p, score, delta.data());
  key_gradients<scalar_t, T>(p, score, delta.data());
}

template <typename scalar_t>
void forward(const AttentionForward& p) {
  using T = at::opmath_type<scalar_t>;
  if (p.score == AttentionScore::kAdditive) {
    forward_rows<T>(p, AdditiveScore<T>{static_cast<const T*>(p.v), p.shape.features});
  } else {
    forward_rows<T>(p, DotScore<T>{static_cast<T>(p.scale), p.shape.features});
  }
}

template <typename scalar_t>
void backward(const AttentionBackward& p) {
  using T = at::opmath_type<scalar_t>;
  if (p.score == AttentionScore::kAdditive) {
    backward_with<scalar_t>(p, AdditiveScore<T>{static_cast<const T*>(p.v), p.shape.features});
  } else {
    backward_with<scalar_t>(p, DotScore<T>{static_cast<T>(p.scale), p.shape.features});
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
