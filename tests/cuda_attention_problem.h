// The problem files of the attention kernels' host checks (tests/cuda_attention_host.cu, the
// tile loop on the host; tests/cuda_attention_emulation.cpp, the kernels under emulation), written
// by tests/test_cuda_attention_host.py and tests/test_cuda_attention_emulation.py.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../csrc/cuda/attention_math.cuh"
#include "../csrc/cuda/attention_plan.h"

namespace fused_rnn::cuda::attention {

/// The problem file: 16 int64 (dtype as DType, score as AttentionScore, B, Tq, Tk, F, Dv,
/// has_lengths, need_weights, has_grad_weights, processors, shared_bytes, 4 unused), the scale
/// (float64), then float64 arrays: query [B, Tq, F], keys [B, Tk, F], v [F], values [B, Tk, Dv],
/// key_lengths [B]; for the backward also grad_context [B, Tq, Dv], grad_weights [B, Tq, Tk] (when
/// given), context [B, Tq, Dv], lse [B, Tq], weights [B, Tq, Tk] (with grad_weights).
struct Problem {
  int64_t header[16];
  double scale;
  std::vector<double> query, keys, v, values, lengths, grad_context, grad_weights, context, lse, weights;
  DType dtype() const { return static_cast<DType>(header[0]); }
  AttentionScore score() const { return static_cast<AttentionScore>(header[1]); }
  AttentionShape shape() const { return {header[2], header[3], header[4], header[5], header[6]}; }
  bool has_lengths() const { return header[7] != 0; }
  bool need_weights() const { return header[8] != 0; }
  bool has_grad_weights() const { return header[9] != 0; }
  AttentionDeviceLimits limits() const { return {static_cast<int32_t>(header[10]), header[11]}; }
};

inline std::vector<double> read_array(std::FILE* f, int64_t count) {
  std::vector<double> data(count);
  if (count > 0 && std::fread(data.data(), sizeof(double), count, f) != static_cast<size_t>(count)) {
    std::fprintf(stderr, "short problem file\n");
    std::exit(2);
  }
  return data;
}

inline Problem read_problem(const char* path, bool backward) {
  Problem p{};
  std::FILE* f = std::fopen(path, "rb");
  if (f == nullptr || std::fread(p.header, sizeof(int64_t), 16, f) != 16 || std::fread(&p.scale, 8, 1, f) != 1) {
    std::fprintf(stderr, "cannot read %s\n", path);
    std::exit(2);
  }
  const AttentionShape n = p.shape();
  p.query = read_array(f, n.batch * n.queries * n.features);
  p.keys = read_array(f, n.batch * n.keys * n.features);
  p.v = read_array(f, n.features);
  p.values = read_array(f, n.batch * n.keys * n.value_size);
  p.lengths = read_array(f, n.batch);
  if (backward) {
    p.grad_context = read_array(f, n.batch * n.queries * n.value_size);
    p.grad_weights = read_array(f, p.has_grad_weights() ? n.batch * n.queries * n.keys : 0);
    p.context = read_array(f, n.batch * n.queries * n.value_size);
    p.lse = read_array(f, n.batch * n.queries);
    p.weights = read_array(f, p.has_grad_weights() ? n.batch * n.queries * n.keys : 0);
  }
  std::fclose(f);
  return p;
}

inline void write_arrays(const char* path, const std::vector<const std::vector<double>*>& arrays) {
  std::FILE* f = std::fopen(path, "wb");
  for (const auto* a : arrays) std::fwrite(a->data(), sizeof(double), a->size(), f);
  std::fclose(f);
}

/// The values of a float64 array as the kernel sees them: rounded to Scalar, in Acc.
template <typename Scalar>
std::vector<AccOf<Scalar>> as_input(const std::vector<double>& x) {
  std::vector<AccOf<Scalar>> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = round_to<Scalar>(static_cast<AccOf<Scalar>>(x[i]));
  return out;
}

template <typename Scalar>
std::vector<double> as_output(const std::vector<AccOf<Scalar>>& x) {
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = static_cast<double>(round_to<Scalar>(x[i]));
  return out;
}

/// delta [B * Tq] = rowsum(grad_context * context) (+ rowsum(grad_weights * weights)) in the
/// accumulation dtype from the Scalar-rounded tensors, as attention_api.cpp computes it.
template <typename Scalar>
std::vector<AccOf<Scalar>> softmax_deltas(const Problem& p) {
  const AttentionShape n = p.shape();
  const int64_t Dv = n.value_size, Tk = n.keys;
  const std::vector<AccOf<Scalar>> gc = as_input<Scalar>(p.grad_context), context = as_input<Scalar>(p.context),
                                   gw = as_input<Scalar>(p.grad_weights), weights = as_input<Scalar>(p.weights);
  std::vector<AccOf<Scalar>> delta(n.batch * n.queries);
  for (int64_t row = 0; row < n.batch * n.queries; ++row) {
    AccOf<Scalar> sum = 0, extra = 0;
    for (int64_t d = 0; d < Dv; ++d) sum += gc[row * Dv + d] * context[row * Dv + d];
    for (int64_t j = 0; p.has_grad_weights() && j < Tk; ++j) extra += gw[row * Tk + j] * weights[row * Tk + j];
    delta[row] = sum + extra;
  }
  return delta;
}

/// run(Scalar{}) for the dtype in the header of the problem file at `path`; 2 when unreadable.
template <typename Run>
int with_problem_dtype(const char* path, const Run& run) {
  Problem head{};
  std::FILE* f = std::fopen(path, "rb");
  if (f == nullptr) return 2;
  const bool read = std::fread(head.header, sizeof(int64_t), 16, f) == 16;
  std::fclose(f);
  if (!read) return 2;
  switch (head.dtype()) {
    case DType::kFloat16: return run(__half{});
    case DType::kBFloat16: return run(__nv_bfloat16{});
    case DType::kFloat32: return run(float{});
    case DType::kFloat64: return run(double{});
  }
  return 2;
}

}  // namespace fused_rnn::cuda::attention
