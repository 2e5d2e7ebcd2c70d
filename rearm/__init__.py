"""rearm: REARM and graph-based multi-modal recommenders, faithful and fast."""

import os as _os

__version__ = "0.1.0"

# Large CPU tensors on transparent huge pages: torch's allocator madvises allocations of 2 MB and
# more when this is set (it reads it once, at its first allocation, so this only takes effect
# when rearm is imported before torch allocates). At 10x Clothing every step allocates and frees
# hundreds of MB of node tensors, and faulting them in 4 KB pages took a fifth of the step.
# THP_MEM_ALLOC_ENABLE=0 in the environment keeps torch's default.
_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
