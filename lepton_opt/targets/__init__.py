"""Everything that imports TVM: lowering to Relax, per-target builds and compiled artifacts."""
