#include "recurrence_checks.h"

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

namespace fused_rnn {
namespace {

std::string dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kHalf: return "torch.float16";
    case at::kLong: return "torch.int64";
    case at::kInt: return "torch.int32";
    default: return c10::toString(dtype);
  }
}

std::string shape_string(at::IntArrayRef shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) {
    out << (i ? ", " : "") << shape[i];
  }
  out << ']';
  return out.str();
}

bool is_supported_dtype(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 ||
         dtype == at::kHalf;
}

// Checks the arguments of one op against an anchor tensor (xw, or hs for the backward ops),
// whose dtype and device every other floating-point argument must share.
class Arguments {
 public:
  Arguments(const char* op, const char* anchor_name, const at::Tensor& anchor,
            const char* anchor_shape)
      : op_(op), anchor_name_(anchor_name), anchor_(anchor) {
    TORCH_CHECK(is_supported_dtype(anchor.scalar_type()), op_, ": ", anchor_name,
                " must have dtype torch.float32, torch.float64, torch.bfloat16 or torch.float16, got ",
                dtype_name(anchor.scalar_type()));
    TORCH_CHECK(anchor.dim() == 3, op_, ": ", anchor_name, " must be 3-D ", anchor_shape,
                ", got shape ", shape_string(anchor.sizes()));
    TORCH_CHECK(anchor.size(0) >= 1, op_, ": ", anchor_name,
                " must have at least one time step, got shape ", shape_string(anchor.sizes()));
  }

  // `tensor` has the anchor's dtype (or `dtype` when given) and device and shape `shape`,
  // spelled `symbolic` in messages (e.g. "[4H, P]").
  void expect(const char* name, const at::Tensor& tensor, std::vector<int64_t> shape,
              const char* symbolic, std::optional<at::ScalarType> dtype = std::nullopt) const {
    TORCH_CHECK(tensor.sizes() == at::IntArrayRef(shape), op_, ": ", name, " must have shape ",
                symbolic, " = ", shape_string(shape), ", got ", shape_string(tensor.sizes()));
    const at::ScalarType expected = dtype.value_or(anchor_.scalar_type());
    TORCH_CHECK(tensor.scalar_type() == expected, op_, ": ", name, " must have dtype ",
                dtype_name(expected),
                dtype ? std::string(" (the accumulation dtype of ") + anchor_name_ + ")"
                      : std::string(" (the dtype of ") + anchor_name_ + ")",
                ", got ", dtype_name(tensor.scalar_type()));
    expect_device(name, tensor);
  }

  void expect_optional(const char* name, const std::optional<at::Tensor>& tensor,
                       std::vector<int64_t> shape, const char* symbolic) const {
    if (tensor.has_value()) {
      expect(name, *tensor, std::move(shape), symbolic);
    }
  }

  void expect_rank(const char* name, const at::Tensor& tensor, int64_t rank,
                   const char* symbolic) const {
    TORCH_CHECK(tensor.dim() == rank, op_, ": ", name, " must be ", rank, "-D ", symbolic,
                ", got shape ", shape_string(tensor.sizes()));
  }

  // The last dimension of the anchor is `gates` * H; returns H.
  int64_t hidden_from_gates(int64_t gates, const char* symbolic) const {
    const int64_t width = anchor_.size(2);
    TORCH_CHECK(width % gates == 0, op_, ": ", anchor_name_, " must have shape ", symbolic,
                " (last dimension a multiple of ", gates, "), got ", shape_string(anchor_.sizes()));
    return width / gates;
  }

  void expect_lengths(const std::optional<at::Tensor>& lengths, int64_t batch) const {
    if (!lengths.has_value()) {
      return;
    }
    TORCH_CHECK(lengths->scalar_type() == at::kLong, op_, ": lengths must have dtype torch.int64, got ",
                dtype_name(lengths->scalar_type()));
    TORCH_CHECK(lengths->sizes() == at::IntArrayRef({batch}), op_, ": lengths must have shape [B] = [",
                batch, "], got ", shape_string(lengths->sizes()));
    expect_device("lengths", *lengths);
  }

  const char* op() const { return op_; }

 private:
  void expect_device(const char* name, const at::Tensor& tensor) const {
    TORCH_CHECK(tensor.device() == anchor_.device(), op_, ": ", name, " must be on ",
                anchor_.device(), " (the device of ", anchor_name_, "), got ", tensor.device());
  }

  const char* op_;
  const char* anchor_name_;
  const at::Tensor& anchor_;
};

}  // namespace

at::ScalarType accumulation_dtype(at::ScalarType dtype) {
  return (dtype == at::kBFloat16 || dtype == at::kHalf) ? at::kFloat : dtype;
}

RecurrenceSizes check_rnn_forward(const char* op, const at::Tensor& xw, const at::Tensor& w_hh,
                                  const at::Tensor& h0, const std::optional<at::Tensor>& lengths) {
  const Arguments args(op, "xw", xw, "[T, B, H]");
  const int64_t T = xw.size(0), B = xw.size(1), H = xw.size(2);
  args.expect("w_hh", w_hh, {H, H}, "[H, H]");
  args.expect("h0", h0, {B, H}, "[B, H]");
  args.expect_lengths(lengths, B);
  return {T, B, H, H};
}

RecurrenceSizes check_rnn_backward(const char* op, const at::Tensor& grad_hs,
                                   const at::Tensor& grad_h_n, const at::Tensor& w_hh,
                                   const at::Tensor& h0, const std::optional<at::Tensor>& lengths,
                                   const at::Tensor& hs) {
  const Arguments args(op, "hs", hs, "[T, B, H]");
  const int64_t T = hs.size(0), B = hs.size(1), H = hs.size(2);
  args.expect("grad_hs", grad_hs, {T, B, H}, "[T, B, H]");
  args.expect("grad_h_n", grad_h_n, {B, H}, "[B, H]");
  args.expect("w_hh", w_hh, {H, H}, "[H, H]");
  args.expect("h0", h0, {B, H}, "[B, H]");
  args.expect_lengths(lengths, B);
  return {T, B, H, H};
}

RecurrenceSizes check_lstm_forward(const char* op, const at::Tensor& xw, const at::Tensor& w_hh,
                                   const std::optional<at::Tensor>& w_hr, const at::Tensor& h0,
                                   const at::Tensor& c0, const std::optional<at::Tensor>& lengths) {
  const Arguments args(op, "xw", xw, "[T, B, 4H]");
  const int64_t T = xw.size(0), B = xw.size(1), H = args.hidden_from_gates(4, "[T, B, 4H]");
  int64_t P = H;
  if (w_hr.has_value()) {
    args.expect_rank("w_hr", *w_hr, 2, "[P, H]");
    P = w_hr->size(0);
    args.expect("w_hr", *w_hr, {P, H}, "[P, H]");
  }
  args.expect("w_hh", w_hh, {4 * H, P}, "[4H, P]");
  args.expect("h0", h0, {B, P}, "[B, P]");
  args.expect("c0", c0, {B, H}, "[B, H]");
  args.expect_lengths(lengths, B);
  return {T, B, H, P};
}

void check_lstm_input(const char* op, const at::Tensor& x, const at::Tensor& w_ih,
                      const std::optional<at::Tensor>& bias, const at::Tensor& w_hh) {
  const Arguments args(op, "x", x, "[T, B, I]");
  args.expect_rank("w_hh", w_hh, 2, "[4H, P]");
  const int64_t G = w_hh.size(0), I = x.size(2);
  TORCH_CHECK(G % 4 == 0, op, ": w_hh must have shape [4H, P] (first dimension a multiple of 4), got ",
              shape_string(w_hh.sizes()));
  args.expect("w_ih", w_ih, {G, I}, "[4H, I]");
  args.expect_optional("bias", bias, {G}, "[4H]");
}

void check_single_step(const char* op, int64_t gates, const at::Tensor& x, const at::Tensor& w_ih,
                       const std::optional<at::Tensor>& b_ih, const at::Tensor& w_hh,
                       const std::optional<at::Tensor>& b_hh, const at::Tensor& h0,
                       const std::optional<at::Tensor>& c0) {
  const Arguments args(op, "x", x, "[1, B, I]");
  TORCH_CHECK(x.size(0) == 1, op, ": x must have shape [1, B, I] (one time step), got ",
              shape_string(x.sizes()));
  const std::string G = gates == 1 ? "" : std::to_string(gates);
  const std::string w_hh_shape = "[" + G + "H, H]", w_ih_shape = "[" + G + "H, I]",
                    bias_shape = "[" + G + "H]";
  args.expect_rank("w_hh", w_hh, 2, w_hh_shape.c_str());
  const int64_t B = x.size(1), I = x.size(2), H = w_hh.size(1);
  args.expect("w_hh", w_hh, {gates * H, H}, w_hh_shape.c_str());
  args.expect("w_ih", w_ih, {gates * H, I}, w_ih_shape.c_str());
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(), op,
              ": b_ih and b_hh must both be given or both be None, got ",
              b_ih.has_value() ? "b_ih alone" : "b_hh alone");
  args.expect_optional("b_ih", b_ih, {gates * H}, bias_shape.c_str());
  args.expect_optional("b_hh", b_hh, {gates * H}, bias_shape.c_str());
  args.expect("h0", h0, {B, H}, "[B, H]");
  args.expect_optional("c0", c0, {B, H}, "[B, H]");
}

RecurrenceSizes check_lstm_backward(const char* op, const at::Tensor& grad_hs,
                                    const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
                                    const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
                                    const at::Tensor& h0, const at::Tensor& c0,
                                    const std::optional<at::Tensor>& lengths, const at::Tensor& hs,
                                    const at::Tensor& cs, const at::Tensor& gates) {
  const Arguments args(op, "hs", hs, "[T, B, P]");
  const int64_t T = hs.size(0), B = hs.size(1), P = hs.size(2);
  args.expect_rank("c0", c0, 2, "[B, H]");
  const int64_t H = c0.size(1);
  args.expect("c0", c0, {B, H}, "[B, H]");
  if (w_hr.has_value()) {
    args.expect("w_hr", *w_hr, {P, H}, "[P, H]");
  } else {
    TORCH_CHECK(P == H, op, ": without w_hr the state size P must equal H, got hs of shape [", T,
                ", ", B, ", ", P, "] and c0 of shape [", B, ", ", H, "]");
  }
  args.expect("grad_hs", grad_hs, {T, B, P}, "[T, B, P]");
  args.expect("grad_h_n", grad_h_n, {B, P}, "[B, P]");
  args.expect("grad_c_n", grad_c_n, {B, H}, "[B, H]");
  args.expect("w_hh", w_hh, {4 * H, P}, "[4H, P]");
  args.expect("h0", h0, {B, P}, "[B, P]");
  args.expect("cs", cs, {T, B, H}, "[T, B, H]", accumulation_dtype(hs.scalar_type()));
  args.expect("gates", gates, {T, B, 4 * H}, "[T, B, 4H]");
  args.expect_lengths(lengths, B);
  return {T, B, H, P};
}

RecurrenceSizes check_gru_forward(const char* op, const at::Tensor& xw, const at::Tensor& w_hh,
                                  const std::optional<at::Tensor>& b_hn, const at::Tensor& h0,
                                  const std::optional<at::Tensor>& lengths) {
  const Arguments args(op, "xw", xw, "[T, B, 3H]");
  const int64_t T = xw.size(0), B = xw.size(1), H = args.hidden_from_gates(3, "[T, B, 3H]");
  args.expect("w_hh", w_hh, {3 * H, H}, "[3H, H]");
  args.expect_optional("b_hn", b_hn, {H}, "[H]");
  args.expect("h0", h0, {B, H}, "[B, H]");
  args.expect_lengths(lengths, B);
  return {T, B, H, H};
}

RecurrenceSizes check_gru_backward(const char* op, const at::Tensor& grad_hs,
                                   const at::Tensor& grad_h_n, const at::Tensor& w_hh,
                                   const std::optional<at::Tensor>& b_hn, const at::Tensor& h0,
                                   const std::optional<at::Tensor>& lengths, const at::Tensor& hs,
                                   const at::Tensor& gates) {
  const Arguments args(op, "hs", hs, "[T, B, H]");
  const int64_t T = hs.size(0), B = hs.size(1), H = hs.size(2);
  args.expect("grad_hs", grad_hs, {T, B, H}, "[T, B, H]");
  args.expect("grad_h_n", grad_h_n, {B, H}, "[B, H]");
  args.expect("w_hh", w_hh, {3 * H, H}, "[3H, H]");
  args.expect_optional("b_hn", b_hn, {H}, "[H]");
  args.expect("h0", h0, {B, H}, "[B, H]");
  args.expect("gates", gates, {T, B, 4 * H}, "[T, B, 4H]");
  args.expect_lengths(lengths, B);
  return {T, B, H, H};
}

void check_lengths_values(const char* op, const at::Tensor& lengths, int64_t steps) {
  const at::Tensor host = lengths.device().is_cpu() ? lengths.contiguous() : lengths.cpu();
  const int64_t* values = host.const_data_ptr<int64_t>();
  const int64_t count = host.numel();
  if (count == 0) {
    return;
  }
  const auto [low, high] = std::minmax_element(values, values + count);
  TORCH_CHECK(*low >= 1 && *high <= steps, op, ": lengths must lie in [1, T] = [1, ", steps,
              "], got values in [", *low, ", ", *high, "]");
}

}  // namespace fused_rnn
