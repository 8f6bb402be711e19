// The attention kernels built for any CPU (at::vec's portable vectors).
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_NAME "default"
#include "attention_impl.h"
