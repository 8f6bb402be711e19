// The CUDA attention kernels' own source run on the host under tests/cuda_emulation.h (which the
// build force-includes before csrc/cuda/attention_{forward,backward}.cu), driven through their
// launch functions as csrc/cuda/attention_api.cpp drives them: plan, allocate (outputs and
// workspaces filled with NaN first), launch, then the sums the API layer does with ATen.
//
//   cuda_attention_emulation forward IN OUT    context, lse, weights
//   cuda_attention_emulation backward IN OUT   d_query, d_keys, d_v, d_values
//
// IN and OUT are the problem and result files of tests/cuda_attention_problem.h.
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "../csrc/cuda/attention_launch.h"
#include "cuda_attention_problem.h"

using namespace fused_rnn::cuda;
using namespace fused_rnn::cuda::attention;

namespace {

/// Device memory of the emulation: 16-byte aligned host memory, NaN-filled, as long as the
/// kernels may use (rounded up to 16 bytes), so that AddressSanitizer sees any access past it.
template <typename T>
struct Buffer {
  explicit Buffer(size_t count) : storage((count * sizeof(T) + 15) / 16) {
    const T nan = from_nan();
    for (size_t i = 0; i < count; ++i) data()[i] = nan;
  }
  T* data() { return reinterpret_cast<T*>(storage.data()); }
  static T from_nan() {
    if constexpr (std::is_same_v<T, int64_t>) {
      return -1;
    } else {
      return from_acc<T>(std::numeric_limits<AccOf<T>>::quiet_NaN());
    }
  }
  struct alignas(16) Chunk {
    unsigned char bytes[16];
  };
  std::vector<Chunk> storage;
};

template <typename Scalar>
Buffer<Scalar> device_copy(const std::vector<double>& x) {
  Buffer<Scalar> buffer(x.size());
  for (size_t i = 0; i < x.size(); ++i) buffer.data()[i] = from_acc<Scalar>(static_cast<AccOf<Scalar>>(x[i]));
  return buffer;
}

template <typename T>
std::vector<double> host_copy(const T* data, size_t count) {
  std::vector<double> out(count);
  for (size_t i = 0; i < count; ++i) out[i] = static_cast<double>(to_acc(data[i]));
  return out;
}

int check(cudaError_t status) {
  if (status != cudaSuccess) std::fprintf(stderr, "launch failed: %d\n", static_cast<int>(status));
  return status == cudaSuccess ? 0 : 1;
}

template <typename Scalar>
struct Run {
  using Acc = AccOf<Scalar>;
  const Problem& p;
  AttentionShape n;
  Buffer<Scalar> query, keys, v, values;
  Buffer<int64_t> lengths;

  explicit Run(const Problem& problem)
      : p(problem), n(problem.shape()), query(device_copy<Scalar>(problem.query)),
        keys(device_copy<Scalar>(problem.keys)), v(device_copy<Scalar>(problem.v)),
        values(device_copy<Scalar>(problem.values)), lengths(problem.lengths.size()) {
    for (size_t b = 0; b < problem.lengths.size(); ++b) lengths.data()[b] = static_cast<int64_t>(problem.lengths[b]);
  }

  bool aligned() const {
    const int64_t vector = 16 / sizeof(Scalar);
    return n.features % vector == 0 && n.value_size % vector == 0;
  }

  int forward(const char* out_path) {
    const int64_t rows = n.batch * n.queries;
    const AttentionTiling tiling =
        plan_attention(AttentionPass::kForward, p.score(), Numerics<Scalar>::kDType, n, p.limits());
    Buffer<Scalar> context(rows * n.value_size), weights(rows * n.keys);
    Buffer<Acc> lse(rows), scores(rows * n.keys), split_context(tiling.splits * rows * n.value_size),
        split_lse(tiling.splits * rows);
    AttentionForwardParams params{};
    params.dtype = Numerics<Scalar>::kDType;
    params.score = p.score();
    params.shape = n;
    params.scale = p.scale;
    params.aligned = aligned();
    params.query = query.data();
    params.keys = keys.data();
    params.v = v.data();
    params.values = values.data();
    params.key_lengths = p.has_lengths() ? lengths.data() : nullptr;
    params.context = context.data();
    params.lse = lse.data();
    params.scores = p.need_weights() ? scores.data() : nullptr;
    params.weights = p.need_weights() ? weights.data() : nullptr;
    params.split_context = tiling.splits > 1 ? split_context.data() : nullptr;
    params.split_lse = tiling.splits > 1 ? split_lse.data() : nullptr;
    if (check(launch_attention_forward(params, tiling, nullptr)) != 0) return 1;
    const std::vector<double> outputs[3] = {host_copy(context.data(), rows * n.value_size), host_copy(lse.data(), rows),
                                            host_copy(weights.data(), p.need_weights() ? rows * n.keys : 0)};
    write_arrays(out_path, {&outputs[0], &outputs[1], &outputs[2]});
    return 0;
  }

  int backward(const char* out_path) {
    const int64_t rows = n.batch * n.queries, F = n.features, Dv = n.value_size;
    const bool additive = p.score() == AttentionScore::kAdditive;
    const AttentionDeviceLimits limits = p.limits();
    const AttentionBackwardTilings tilings{
        plan_attention(AttentionPass::kQueries, p.score(), Numerics<Scalar>::kDType, n, limits),
        plan_attention(AttentionPass::kKeys, p.score(), Numerics<Scalar>::kDType, n, limits),
        plan_attention(AttentionPass::kValues, p.score(), Numerics<Scalar>::kDType, n, limits)};
    Buffer<Scalar> grad_context = device_copy<Scalar>(p.grad_context), grad_weights = device_copy<Scalar>(p.grad_weights);
    const std::vector<Acc> deltas = softmax_deltas<Scalar>(p);
    Buffer<Acc> lse(rows), delta(rows);
    for (int64_t row = 0; row < rows; ++row) {
      lse.data()[row] = static_cast<Acc>(p.lse[row]);
      delta.data()[row] = deltas[row];
    }
    const int32_t splits = tilings.queries.splits;
    Buffer<Scalar> d_query(rows * F), d_keys(n.batch * n.keys * F), d_values(n.batch * n.keys * Dv);
    Buffer<Acc> split_d_query(splits * rows * F), d_v_blocks(n.batch * tilings.keys.row_blocks * F);
    AttentionBackwardParams params{};
    params.dtype = Numerics<Scalar>::kDType;
    params.score = p.score();
    params.shape = n;
    params.scale = p.scale;
    params.aligned = aligned();
    params.grad_context = grad_context.data();
    params.grad_weights = p.has_grad_weights() ? grad_weights.data() : nullptr;
    params.query = query.data();
    params.keys = keys.data();
    params.v = additive ? v.data() : nullptr;
    params.values = values.data();
    params.key_lengths = p.has_lengths() ? lengths.data() : nullptr;
    params.lse = lse.data();
    params.delta = delta.data();
    params.d_query = d_query.data();
    params.split_d_query = splits > 1 ? split_d_query.data() : nullptr;
    params.d_keys = d_keys.data();
    params.d_values = d_values.data();
    params.d_v_blocks = additive ? d_v_blocks.data() : nullptr;
    if (check(launch_attention_backward(params, tilings, nullptr)) != 0) return 1;

    std::vector<double> dq = host_copy(d_query.data(), rows * F), dv(F, 0.0);
    if (splits > 1) {  // the splits' partial sums in split order (times v for the additive score)
      for (int64_t i = 0; i < rows * F; ++i) {
        Acc sum = 0;
        for (int32_t s = 0; s < splits; ++s) sum += split_d_query.data()[s * rows * F + i];
        dq[i] = static_cast<double>(round_to<Scalar>(additive ? sum * to_acc(v.data()[i % F]) : sum));
      }
    }
    if (additive) {
      for (int64_t a = 0; a < F; ++a) {
        Acc sum = 0;
        for (int64_t block = 0; block < n.batch * tilings.keys.row_blocks; ++block) sum += d_v_blocks.data()[block * F + a];
        dv[a] = static_cast<double>(round_to<Scalar>(sum));
      }
    }
    const std::vector<double> outputs[4] = {dq, host_copy(d_keys.data(), n.batch * n.keys * F), dv,
                                            host_copy(d_values.data(), n.batch * n.keys * Dv)};
    write_arrays(out_path, {&outputs[0], &outputs[1], &outputs[2], &outputs[3]});
    return 0;
  }
};

template <typename Scalar>
int run(const std::string& command, const char* in_path, const char* out_path) {
  const Problem problem = read_problem(in_path, command == "backward");
  Run<Scalar> run(problem);
  return command == "forward" ? run.forward(out_path) : run.backward(out_path);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string command = argc > 1 ? argv[1] : "";
  if ((command == "forward" || command == "backward") && argc == 4) {
    return with_problem_dtype(argv[2], [&](auto scalar) { return run<decltype(scalar)>(command, argv[2], argv[3]); });
  }
  std::fprintf(stderr, "usage: %s forward IN OUT | backward IN OUT\n", argv[0]);
  return 2;
}
