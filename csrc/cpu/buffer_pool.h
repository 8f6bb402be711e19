// The allocator of the CPU ops' per-call buffers above 1 MiB: blocks are kept after use and
// handed to later calls instead of going back to the system.
//
// glibc maps every allocation above 32 MiB afresh and unmaps it when freed, and gives the top of
// its heap back to the system once more than its trim threshold (twice the largest mmap threshold
// reached, so up to 64 MiB) lies free there: a loop that frees and reallocates a few buffers of
// some MiB each (a decoder's weight gradients, a layer's [T, B, 4H] gates) regrows the heap and
// faults the same pages in again at every call. On the machines measured, the first touch of fresh
// memory runs at 1–2.6 GiB/s even in huge pages (a second fill: 25–28 GiB/s), so a training step
// on fresh buffers spends more time faulting them in than computing them (LSTM forward saving its
// gates, B = 64, H = 1024: 2.5–2.9 ms per step on fresh memory against 1.2 ms on reused; LSTM
// B = 16, T = 256, H = 256 forward+backward: 43–54 ms with 25–62 MiB faulted in per call against
// 36 ms pooled). This allocator keeps such blocks, like PyTorch's CUDA caching allocator, up to a
// limit on the bytes it holds unused (FUSED_RNN_CPU_CACHE_MB, default a quarter of physical
// memory; 0 turns caching off).
#pragma once

#include <c10/core/Allocator.h>

#include <cstddef>

namespace fused_rnn::cpu {

/// Allocations larger than this come from the pool; smaller ones from PyTorch's CPU allocator.
/// Blocks are whole 2 MiB huge pages: a request just above 1 MiB takes a 2 MiB block, and a
/// smaller one would waste more than half of its block.
constexpr size_t kLargestUnpooledBytes = size_t{1} << 20;

/// The allocator of empty_sequence (a process-wide singleton, never destroyed).
c10::Allocator* buffer_pool();

/// Bytes of the blocks the pool holds unused for later calls.
size_t buffer_pool_cached_bytes();

/// Bytes of the pool's blocks in use by live tensors.
size_t buffer_pool_in_use_bytes();

/// The most bytes the pool holds unused; blocks freed beyond it are unmapped, oldest first.
size_t buffer_pool_limit();

/// Sets that limit (0: every block is unmapped when freed), unmapping cached blocks beyond it.
void set_buffer_pool_limit(size_t bytes);

/// Unmaps every cached block (blocks in use are unaffected and return to the pool when freed).
void empty_buffer_pool();

}  // namespace fused_rnn::cpu
