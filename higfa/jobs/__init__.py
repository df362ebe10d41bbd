"""Dataset jobs: the `higfa` command and what it runs over whole datasets.

`cli` (the command and its sub-commands), `dataset` (ImageFolder / manifest reading, safe labels, atomic
writes), `augment` (the `higfa augment` job: its plan of items, the run loop, resumable records),
`records` (the output folder: fingerprint, per-rank records, merge), `distributed` (torchrun, SLURM arrays,
`--shard`) and `evaluate` (does the synthetic data help a classifier). They use the method at the top of
`higfa/` and a backend from `higfa.backends`; nothing here is imported by the method.
"""
