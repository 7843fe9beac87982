"""Everything that imports TVM: lowering to Relax, per-target builds and compiled artifacts.

TVM's CPU thread pool, left to itself, assumes two hardware threads per core on x86 and starts
half as many workers as there are CPUs (one on a 2-core machine without SMT). lepton-opt uses
every CPU the process may run on unless ``TVM_NUM_THREADS`` says otherwise; the pool reads it
when it first starts, so it is set here, before anything imports TVM.
"""

import os as _os

_os.environ.setdefault("TVM_NUM_THREADS", str(len(_os.sched_getaffinity(0)) if hasattr(_os, "sched_getaffinity")
                                              else (_os.cpu_count() or 1)))
