"""Experiments: runs as directories, and the studies built from them.

The top of the library: it may use the engine (:mod:`pipa_core.uda`), evaluation
(:mod:`pipa_core.eval`) and everything below; nothing in those imports it.

- :mod:`pipa_core.experiments.runs`: a run directory's config, model, metrics and
  result; the analysis datasets; notebook paths.
- :mod:`pipa_core.experiments.comparisons`: the embedded benchmark's warm start,
  the quickstart table over seeds, the ablation, run reuse by configuration.
"""
