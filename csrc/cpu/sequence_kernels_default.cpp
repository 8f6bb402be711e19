// The sequence kernels built for any CPU (at::vec's portable vectors).
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_NAME "default"
#include "sequence_kernels_impl.h"
