"""The allocator's thresholds after importing mglm_core (mglm_core.allocator)."""
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import resource, sys
    import numpy as np
    if sys.argv[1] == "import":
        import mglm_core  # noqa: F401
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = faults()
    for _ in range(100):  # temporaries of 1.6 MB in turn, as a row pass makes them
        a = np.ones(200_000)
        b = a * 2.0
        del a, b
    print(faults() - start)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc thresholds")
def test_import_keeps_freed_temporaries_for_reuse():
    """In a fresh process, 1.6 MB temporaries allocated and freed in turn are paged in again every
    time (about 800 page faults each); after importing mglm_core they reuse the same memory."""
    def run(mode):
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.strip())

    plain, settled = run("plain"), run("import")
    if plain < 20_000:
        pytest.skip(f"this allocator does not trim a fresh heap ({plain} faults without the import)")
    assert settled < plain / 20
