"""The defaults every layer shares (no imports: any module may read them)."""

# The preset every flow, `trajfm demo`, `trajfm train`, `python -m trajfm.train`, the deployments
# and ``run_training`` train by default: the patched GPT-2 in per-context units, at par in-domain
# with the others and the one that transfers to movers, regions and sampling rates it never saw
# (docs/benchmarks.md). One constant, in a module that imports nothing, so every layer can read it.
DEFAULT_PRESET = "timesfm-patch-context"
# The pre-training flow's default: the foundation model preset that trains on 2 CPU cores.
DEFAULT_PRETRAIN_PRESET = "base-small"
