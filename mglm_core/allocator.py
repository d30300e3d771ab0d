r"""The C allocator's thresholds, set once as a long-running numpy process has them.

glibc's ``malloc`` (Linux) returns the top of its heap to the operating system whenever more
than ``M_TRIM_THRESHOLD`` bytes are free there, and serves blocks from ``M_MMAP_THRESHOLD``
bytes up by ``mmap``. Both start small (128 kB and 256 kB) and only grow when a large
``mmap``-ed block is freed (the threshold becomes that block's size, at most 32 MB, and the trim
threshold twice that). Until then, a program that allocates and frees temporaries of a few
hundred kB to a few MB in turn -- every row pass of a fit does -- gives the memory back and
faults it in again each time: 130,000 page faults, half the time, in one ``fit_vb`` of 1e5 rows
in a fresh process, and a sixth of a crossed ``fit_map``'s. Whether a given process is in that
state depends on what it freed before (one earlier large array is enough to leave it).

:func:`settle` allocates and frees one 16 MB block without touching it (no memory is used): the
thresholds become 16 MB and 32 MB, as after any large numpy array. The only lasting effect is
that up to 32 MB freed at the top of the heap stay with the process for reuse. Elsewhere than
on glibc nothing changes (the block is simply allocated and freed).
"""
from __future__ import annotations

import numpy as np

__all__ = ["settle"]

#: The block allocated and freed (at most glibc's 32 MB ceiling for the dynamic threshold).
BLOCK_BYTES = 16 * 2**20

_done = False


def settle() -> None:
    """Raise the allocator's dynamic thresholds once per process (see the module docstring)."""
    global _done
    if not _done:
        np.empty(BLOCK_BYTES // 8)  # freed at once, never written: no page is touched
        _done = True
