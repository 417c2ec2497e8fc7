// Everything is inline in include/host_atomics.h; SwiftPM wants one source file.
#include "host_atomics.h"
