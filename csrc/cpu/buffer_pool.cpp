#include "buffer_pool.h"

#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#ifdef __linux__
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace fused_rnn::cpu {
namespace {

/// The size of a transparent huge page on x86-64 Linux; blocks are mapped in multiples of it.
constexpr size_t kHugePage = size_t{1} << 21;

/// A cached block serves requests of at least 1 / kMostWasted of its size.
constexpr size_t kMostWasted = 2;

size_t round_up(size_t bytes, size_t multiple) { return (bytes + multiple - 1) / multiple * multiple; }

/// `size` bytes at `base` (huge-page aligned); `requested` is what the tensor asked for.
struct Block {
  void* base;
  size_t size;
  size_t requested;
  uint64_t released_at;
};

#ifdef __linux__
/// A fresh huge-page-aligned mapping of `size` bytes (a multiple of kHugePage), or null. Its
/// pages are requested as transparent huge pages and faulted in by all threads at once: faulted
/// in one by one inside a step loop (4 KiB pages, or 2 MiB pages zeroed by whichever thread
/// touches them first while the others wait) they cost more than the pointwise math of a forward
/// pass at large sizes.
void* map_block(size_t size) {
  const size_t span = size + kHugePage;
  void* mapping = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapping == MAP_FAILED) {
    return nullptr;
  }
  const auto begin = reinterpret_cast<uintptr_t>(mapping);
  const uintptr_t aligned = round_up(begin, kHugePage);
  if (aligned > begin) {
    munmap(mapping, aligned - begin);
  }
  const uintptr_t end = aligned + size;
  if (begin + span > end) {
    munmap(reinterpret_cast<void*>(end), begin + span - end);
  }
  madvise(reinterpret_cast<void*>(aligned), size, MADV_HUGEPAGE);  // best effort
  const auto pages = static_cast<int64_t>(size / kHugePage);
  at::parallel_for(0, pages, 1, [&](int64_t first, int64_t last) {
    for (int64_t page = first; page < last; ++page) {
      reinterpret_cast<volatile char*>(aligned + uintptr_t(page) * kHugePage)[0] = 0;
    }
  });
  return reinterpret_cast<void*>(aligned);
}

void unmap_block(const Block& block) { munmap(block.base, block.size); }

size_t physical_memory_bytes() {
  return static_cast<size_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<size_t>(sysconf(_SC_PAGE_SIZE));
}
#endif

/// FUSED_RNN_CPU_CACHE_MB when set to a number, else a quarter of physical memory.
size_t initial_limit() {
  if (const char* megabytes = std::getenv("FUSED_RNN_CPU_CACHE_MB")) {
    char* end = nullptr;
    const unsigned long long value = std::strtoull(megabytes, &end, 10);
    if (end != megabytes && *end == '\0') {
      return static_cast<size_t>(value) << 20;
    }
    TORCH_WARN("fused_rnn: FUSED_RNN_CPU_CACHE_MB must be a whole number of MiB, got '", megabytes,
               "'; using the default (a quarter of physical memory)");
  }
#ifdef __linux__
  return physical_memory_bytes() / 4;
#else
  return 0;
#endif
}

class BufferPool;
BufferPool& the_pool();

class BufferPool final : public c10::Allocator {
 public:
  BufferPool() : limit_(initial_limit()) {
#ifdef __linux__
    pthread_atfork(nullptr, nullptr, &BufferPool::after_fork_in_child);
#endif
  }

  c10::DataPtr allocate(size_t nbytes) override {
#ifdef __linux__
    if (nbytes > kLargestUnpooledBytes) {
      return allocate_block(nbytes);
    }
#endif
    return c10::GetCPUAllocator()->allocate(nbytes);
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  size_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_bytes_;
  }

  size_t in_use_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return in_use_bytes_;
  }

  size_t limit() {
    std::lock_guard<std::mutex> lock(mutex_);
    return limit_;
  }

  void set_limit(size_t bytes) {
    std::vector<Block> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      limit_ = bytes;
      evict_beyond(limit_, evicted);
    }
    unmap(evicted);
  }

  void empty() {
    std::vector<Block> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      evict_beyond(0, evicted);
    }
    unmap(evicted);
  }

 private:
#ifdef __linux__
  c10::DataPtr allocate_block(size_t nbytes) {
    Block found = take_cached(round_up(nbytes, kHugePage));
    if (found.base == nullptr) {
      found.base = map_block(found.size);
      if (found.base == nullptr) {
        empty();
        found.base = map_block(found.size);
      }
      TORCH_CHECK_WITH(OutOfMemoryError, found.base != nullptr,
                       "fused_rnn CPU buffer pool: not enough memory: you tried to allocate ",
                       nbytes, " bytes.");
    }
    auto* block = new Block{found.base, found.size, nbytes, 0};
    size_t in_use = 0, reserved = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      in_use_bytes_ += block->size;
      in_use = in_use_bytes_;
      reserved = in_use_bytes_ + cached_bytes_;
    }
    if (c10::memoryProfilingEnabled()) {
      c10::reportMemoryUsageToProfiler(block->base, static_cast<int64_t>(nbytes), in_use, reserved,
                                       c10::Device(c10::DeviceType::CPU));
    }
    return {block->base, block, &BufferPool::release, c10::Device(c10::DeviceType::CPU)};
  }

  /// The smallest cached block of `size` to kMostWasted * `size` bytes, taken out of the cache,
  /// or else a block of `size` bytes with a null base.
  Block take_cached(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto best = cached_.end();
    for (auto it = cached_.begin(); it != cached_.end(); ++it) {
      if (it->size >= size && it->size <= kMostWasted * size &&
          (best == cached_.end() || it->size < best->size)) {
        best = it;
      }
    }
    if (best == cached_.end()) {
      return {nullptr, size, 0, 0};
    }
    const Block found = *best;
    cached_.erase(best);
    cached_bytes_ -= found.size;
    return found;
  }
#endif

  /// A child forked while another thread held the lock would wait for it forever: the child,
  /// which has only the forking thread, starts with an unlocked one.
  static void after_fork_in_child() { new (&the_pool().mutex_) std::mutex(); }

  static void release(void* context) {
    auto* block = static_cast<Block*>(context);
    the_pool().give_back(*block);
    delete block;
  }

  void give_back(Block block) {
    std::vector<Block> evicted;
    size_t in_use = 0, reserved = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      in_use_bytes_ -= block.size;
      block.released_at = ++clock_;
      cached_.push_back(block);
      cached_bytes_ += block.size;
      evict_beyond(limit_, evicted);
      in_use = in_use_bytes_;
      reserved = in_use_bytes_ + cached_bytes_;
    }
    unmap(evicted);
    if (c10::memoryProfilingEnabled()) {
      c10::reportMemoryUsageToProfiler(block.base, -static_cast<int64_t>(block.requested), in_use,
                                       reserved, c10::Device(c10::DeviceType::CPU));
    }
  }

  /// Moves the least recently released cached blocks into `evicted` until at most `bytes` stay.
  void evict_beyond(size_t bytes, std::vector<Block>& evicted) {
    while (cached_bytes_ > bytes) {
      auto oldest = cached_.begin();
      for (auto it = cached_.begin(); it != cached_.end(); ++it) {
        if (it->released_at < oldest->released_at) {
          oldest = it;
        }
      }
      cached_bytes_ -= oldest->size;
      evicted.push_back(*oldest);
      cached_.erase(oldest);
    }
  }

  static void unmap(const std::vector<Block>& blocks) {
#ifdef __linux__
    for (const Block& block : blocks) {
      unmap_block(block);
    }
#endif
  }

  std::mutex mutex_;
  std::vector<Block> cached_;  // a few dozen blocks at most: linear scans
  size_t cached_bytes_ = 0;
  size_t in_use_bytes_ = 0;
  size_t limit_;
  uint64_t clock_ = 0;
};

/// Never destroyed: tensors holding its blocks may be freed after static destructors have run.
BufferPool& the_pool() {
  static auto* pool = new BufferPool();
  return *pool;
}

}  // namespace

c10::Allocator* buffer_pool() { return &the_pool(); }

size_t buffer_pool_cached_bytes() { return the_pool().cached_bytes(); }

size_t buffer_pool_in_use_bytes() { return the_pool().in_use_bytes(); }

size_t buffer_pool_limit() { return the_pool().limit(); }

void set_buffer_pool_limit(size_t bytes) { the_pool().set_limit(bytes); }

void empty_buffer_pool() { the_pool().empty(); }

}  // namespace fused_rnn::cpu
