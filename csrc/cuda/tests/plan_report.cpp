// Prints the launch plans of recurrence_planner.cpp as JSON lines, for the host tests
// (tests/test_cuda_host.py); `plan_report catalogue` prints the engine catalogue instead. One
// problem per input line:
//
//   <device: h100|h200> <cell: 0 rnn, 1 lstm, 2 gru> <direction: 0 forward, 1 backward>
//   <math: 0 bf16, 1 f16, 2 tf32, 3 f32 fma, 4 f64 fma> <batch> <hidden> <state> <projected: 0|1>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>

#include "../recurrence_planner.h"

using namespace fused_rnn::cuda;

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "catalogue") {
    for (const Direction direction : {Direction::kForward, Direction::kBackward}) {
      for (int i = 0; i < engine_count(direction); ++i) {
        const EngineConfig& e = engines(direction)[i];
        std::printf("{\"direction\": %d, \"engine\": %d, \"math\": %d, \"regime\": %d, \"m_tiles\": %d, \"k_steps\": %d}\n",
                    static_cast<int>(direction), i, static_cast<int>(e.math), static_cast<int>(e.regime), e.m_tiles,
                    e.k_steps);
      }
    }
    return 0;
  }
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string device_name;
    int cell = 0, direction = 0, math = 0, projected = 0;
    long long batch = 0, hidden = 0, state = 0;
    if (!(in >> device_name >> cell >> direction >> math >> batch >> hidden >> state >> projected)) {
      continue;
    }
    const DeviceDescription device = device_name == "h200" ? h200_description() : h100_description();
    const ProblemShape problem{static_cast<CellKind>(cell), static_cast<Direction>(direction), static_cast<Math>(math),
                               batch, hidden, state, projected != 0};
    const RecurrencePlan plan = plan_recurrence(problem, device);
    const RecurrenceGeometry& g = plan.geometry;
    const WorkspaceLayout layout = workspace_layout(plan, problem.projected);
    std::printf(
        "{\"engine\": %d, \"math\": %d, \"regime\": %d, \"m_tiles\": %d, \"k_capacity\": %d, \"warps_m\": %d, "
        "\"warps_k\": %d, \"k_steps\": %d, \"k_steps_per_warp\": %d, \"units_per_block\": %d, \"unit_slices\": %d, "
        "\"batch_per_block\": %d, \"batch_slices\": %d, \"blocks\": %d, \"stages\": %d, \"shared_bytes\": %d, "
        "\"rows_per_block\": %d, \"persistent\": %s, \"estimated_step_us\": %.4f, \"workspace_bytes\": %lld, "
        "\"sm_count\": %d, \"shared_per_block_optin\": %d, \"shared_per_sm\": %d, \"reserved\": %d}\n",
        plan.engine, static_cast<int>(plan.config.math), static_cast<int>(plan.config.regime), plan.config.m_tiles,
        plan.config.k_steps, g.warps_m, g.warps_k, g.k_steps, g.k_steps_per_warp, g.units_per_block, g.unit_slices,
        g.batch_per_block, g.batch_slices, g.blocks, g.stages, g.shared_bytes, g.rows_per_block,
        plan.persistent ? "true" : "false", plan.estimated_step_us, static_cast<long long>(layout.bytes),
        device.sm_count, device.shared_per_block_optin, device.shared_per_sm, device.shared_reserved_per_block);
  }
  return 0;
}
