"""Fusion passes, one module per family: each is a list of rewrite rules (pattern, check that
says why it refused, rewrite) wrapped in a :class:`~lepton_opt.passes.fusion.common.FusionPass`."""
