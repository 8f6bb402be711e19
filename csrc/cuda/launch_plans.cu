#include "launch_plans.h"

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

namespace fused_rnn::cuda {
namespace {

std::mutex cache_mutex;

DeviceDescription describe(int device) {
  cudaDeviceProp properties{};
  if (cudaGetDeviceProperties(&properties, device) != cudaSuccess) {
    return h100_description();  // the launch that follows reports the error
  }
  DeviceDescription d{};
  d.sm_count = properties.multiProcessorCount;
  d.registers_per_sm = properties.regsPerMultiprocessor;
  d.shared_per_sm = static_cast<int>(properties.sharedMemPerMultiprocessor);
  d.shared_per_block_optin = static_cast<int>(properties.sharedMemPerBlockOptin);
  d.shared_reserved_per_block = static_cast<int>(properties.reservedSharedMemPerBlock);
  d.threads_per_sm = properties.maxThreadsPerMultiProcessor;
  d.blocks_per_sm = properties.maxBlocksPerMultiProcessor;
  d.registers_per_thread = 255;
  d.l2_bytes = properties.l2CacheSize;
  d.major = properties.major;
  d.minor = properties.minor;
  return d;
}

const DeviceDescription& description(int device) {
  static std::map<int, DeviceDescription> devices;
  auto found = devices.find(device);
  if (found == devices.end()) {
    found = devices.emplace(device, describe(device)).first;
  }
  return found->second;
}

/// FUSED_RNN_CUDA_REGIME as a regime index, or -1.
int regime_from_environment() {
  const char* value = std::getenv("FUSED_RNN_CUDA_REGIME");
  if (value == nullptr) {
    return -1;
  }
  const char* names[] = {"registers", "shared", "global"};
  for (int regime = 0; regime < 3; ++regime) {
    if (std::strcmp(value, names[regime]) == 0) {
      return regime;
    }
  }
  return -1;
}

bool step_launches_from_environment() {
  const char* value = std::getenv("FUSED_RNN_CUDA_STEP_LAUNCHES");
  return value != nullptr && std::strcmp(value, "1") == 0;
}

}  // namespace

DevicePlan current_plan(const ProblemShape& problem) {
  int device = 0;
  (void)cudaGetDevice(&device);
  const int regime = regime_from_environment();
  const bool step_launches = step_launches_from_environment();
  using Key = std::tuple<int, int, int, int, int64_t, int64_t, int64_t, bool, int, bool>;
  static std::map<Key, RecurrencePlan> plans;
  const Key key{device,         static_cast<int>(problem.cell), static_cast<int>(problem.direction),
                static_cast<int>(problem.math), problem.batch, problem.hidden, problem.state, problem.projected,
                regime,         step_launches};
  const std::lock_guard<std::mutex> lock(cache_mutex);
  auto found = plans.find(key);
  if (found == plans.end()) {
    const Regime only = static_cast<Regime>(regime);
    RecurrencePlan plan = plan_recurrence(problem, description(device), regime < 0 ? nullptr : &only);
    plan.persistent = plan.persistent && !step_launches;
    found = plans.emplace(key, plan).first;
  }
  return {device, found->second};
}

bool grid_fits(const void* kernel, int blocks, int shared_bytes, int device) {
  using Key = std::tuple<const void*, int, int, int>;
  static std::map<Key, bool> fits;
  const Key key{kernel, blocks, shared_bytes, device};
  const std::lock_guard<std::mutex> lock(cache_mutex);
  auto found = fits.find(key);
  if (found == fits.end()) {
    int cooperative = 0, per_sm = 0;
    const bool ok =
        cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device) == cudaSuccess &&
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, shared_bytes) == cudaSuccess &&
        cooperative != 0 && int64_t{per_sm} * description(device).sm_count >= blocks;
    (void)cudaGetLastError();  // a failed query is a "no", not an error of the next launch
    found = fits.emplace(key, ok).first;
  }
  return found->second;
}

int setup_blocks(int64_t elements, int device) {
  int sm_count = 0;
  {
    const std::lock_guard<std::mutex> lock(cache_mutex);
    sm_count = description(device).sm_count;
  }
  const int64_t wanted = ceil_div(elements, kThreads);
  return static_cast<int>(wanted < 1 ? 1 : (wanted < 8 * sm_count ? wanted : 8 * sm_count));
}

}  // namespace fused_rnn::cuda
