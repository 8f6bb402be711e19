// The allocator of the CPU ops' large per-call buffers: blocks above glibc's largest mmap
// threshold are kept after use and handed to later calls instead of being unmapped.
//
// glibc serves allocations up to 32 MiB from memory freed by earlier calls, but maps every larger
// one afresh and unmaps it when freed. On the machines measured, the first touch of fresh memory
// runs at 1–2.6 GiB/s even in huge pages (a second fill: 25–28 GiB/s), so a training step that
// allocates [T, B, 4H] buffers of 64 MiB spends more time faulting them in than computing them
// (LSTM forward saving its gates, B = 64, H = 1024: 2.5–2.9 ms per step on fresh memory against
// 1.2 ms on reused). This allocator keeps such blocks, like PyTorch's CUDA caching allocator, up
// to a limit on the bytes it holds unused (FUSED_RNN_CPU_CACHE_MB, default a quarter of physical
// memory; 0 turns caching off).
#pragma once

#include <c10/core/Allocator.h>

#include <cstddef>

namespace fused_rnn::cpu {

/// Allocations larger than this come from the pool; smaller ones from PyTorch's CPU allocator.
/// glibc maps afresh every request whose chunk (the bytes, its header and alignment, rounded up
/// to pages) exceeds 32 MiB, so one of exactly 32 MiB already is (a float32 [8192, 1024] GEMM
/// output: 16.8 ms freshly mapped against 10.8 ms pooled): the pool starts a MiB below.
constexpr size_t kLargestUnpooledBytes = size_t{31} << 20;

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
