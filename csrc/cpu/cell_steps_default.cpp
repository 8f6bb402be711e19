// The step kernels built for any CPU (at::vec's portable vectors).
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_NAME "default"
#include "cell_steps_impl.h"
