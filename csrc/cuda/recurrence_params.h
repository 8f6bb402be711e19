// Parameters of the CUDA recurrence kernels: raw device pointers and sizes, in plain C++ (no
// torch headers), filled by the torch-facing layer (recurrence_api.cpp) and read by the launch
// functions (recurrence_launch.h).
//
// Shapes (see fused_rnn/reference.py): T steps, B rows, H hidden units, P = proj_size or H.
// Every tensor is contiguous and on one device. "Storage" tensors have the input dtype `dtype`;
// LSTM cell states `cs` have the accumulation dtype (float32 for half types, else `dtype`).
// `lengths` (int64, device memory) is null when every row runs all T steps; otherwise row b runs
// steps t < lengths[b] (1 <= lengths[b] <= T), emits zeros after, and its final state is the
// state after step lengths[b] - 1. `allow_tf32` (float32 only): the recurrent product may run on
// tf32 tensor cores (torch.backends.cuda.matmul.allow_tf32); otherwise it is exact FMA.
#pragma once

#include <cstdint>

namespace fused_rnn::cuda {

enum class DType : int32_t { kFloat32, kFloat64, kFloat16, kBFloat16 };

struct RecurrenceShape {
  int64_t steps;   // T
  int64_t batch;   // B
  int64_t hidden;  // H
  int64_t state;   // P
};

/// hs[t] = act(xw[t] + h[t-1] @ W_hh^T), act = relu or tanh.
struct RnnForwardParams {
  DType dtype;
  RecurrenceShape shape;
  bool allow_tf32;
  bool relu;
  const void* xw;          // [T, B, H]
  const void* w_hh;        // [H, H]
  const void* h0;          // [B, H]
  const int64_t* lengths;  // [B] or null
  void* hs;                // [T, B, H] out
  void* h_n;               // [B, H] out
};

struct RnnBackwardParams {
  DType dtype;
  RecurrenceShape shape;
  bool allow_tf32;
  bool relu;
  const void* grad_hs;     // [T, B, H]
  const void* grad_h_n;    // [B, H]
  const void* w_hh;        // [H, H]
  const void* h0;          // [B, H]
  const int64_t* lengths;  // [B] or null
  const void* hs;          // [T, B, H] saved by the forward
  void* dxw;               // [T, B, H] out
  void* dh0;               // [B, H] out
};

/// LSTM, gate order i, f, g, o; with w_hr, h = (o * tanh(c)) @ W_hr^T.
struct LstmForwardParams {
  DType dtype;
  RecurrenceShape shape;
  bool allow_tf32;
  const void* xw;          // [T, B, 4H]
  const void* w_hh;        // [4H, P]
  const void* w_hr;        // [P, H] or null
  const void* h0;          // [B, P]
  const void* c0;          // [B, H]
  const int64_t* lengths;  // [B] or null
  void* hs;                // [T, B, P] out
  void* h_n;               // [B, P] out
  void* c_n;               // [B, H] out
  void* cs;                // [T, B, H] out, accumulation dtype; null for the inference op
  void* gates;             // [T, B, 4H] out, activated i, f, g, o; null for the inference op
};

struct LstmBackwardParams {
  DType dtype;
  RecurrenceShape shape;
  bool allow_tf32;
  const void* grad_hs;     // [T, B, P]
  const void* grad_h_n;    // [B, P]
  const void* grad_c_n;    // [B, H]
  const void* w_hh;        // [4H, P]
  const void* w_hr;        // [P, H] or null
  const void* h0;          // [B, P]
  const void* c0;          // [B, H]
  const int64_t* lengths;  // [B] or null
  const void* hs;          // [T, B, P] saved by the forward
  const void* cs;          // [T, B, H] saved, accumulation dtype
  const void* gates;       // [T, B, 4H] saved
  void* dxw;               // [T, B, 4H] out
  void* dh0;               // [B, P] out
  void* dc0;               // [B, H] out
  void* dw_hr;             // [P, H] out, or null without w_hr
};

/// GRU, gate order r, z, n; n = tanh(xw_n + r * (W_hn h + b_hn)).
struct GruForwardParams {
  DType dtype;
  RecurrenceShape shape;
  bool allow_tf32;
  const void* xw;          // [T, B, 3H]
  const void* w_hh;        // [3H, H]
  const void* b_hn;        // [H] or null
  const void* h0;          // [B, H]
  const int64_t* lengths;  // [B] or null
  void* hs;                // [T, B, H] out
  void* h_n;               // [B, H] out
  void* gates;             // [T, B, 4H] out: r, z, n, W_hn h + b_hn; null for the inference op
};

struct GruBackwardParams {
  DType dtype;
  RecurrenceShape shape;
  bool allow_tf32;
  const void* grad_hs;     // [T, B, H]
  const void* grad_h_n;    // [B, H]
  const void* w_hh;        // [3H, H]
  const void* b_hn;        // [H] or null
  const void* h0;          // [B, H]
  const int64_t* lengths;  // [B] or null
  const void* hs;          // [T, B, H] saved by the forward
  const void* gates;       // [T, B, 4H] saved
  void* dxw;               // [T, B, 3H] out
  void* d_hn;              // [T, B, H] out: gradient of W_hn h[t-1] + b_hn
  void* dh0;               // [B, H] out
};

}  // namespace fused_rnn::cuda
