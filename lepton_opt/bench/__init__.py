"""``lepton-opt bench``: the benchmark runner, its variants, the memory probe and the reports,
built on :mod:`lepton_opt.evaluation` (sessions, comparisons, data, interleaved timing)."""
