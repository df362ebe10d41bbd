"""Dataset jobs: the `higfa` command and what it runs over whole datasets.

`cli` (the command and its sub-commands); for `higfa augment`: `augment` (its options), `settings` (the typed,
checked settings), `plan` (sources, items, groups, seeds), `item_sampler` (HiGFA for a group of items),
`job` (the run loop, its typed stats, interruption), `records` (the output folder: fingerprint, per-rank
records, merge), `safety` (model-file content digests, one lock per shard, folder checks) and `distributed`
(torchrun, SLURM arrays, `--shard`); `dataset` (ImageFolder / manifest reading, the label rules shared with the
node pack, atomic writes), `evaluate` (does the synthetic data help a classifier: SaSPA's protocol), and the
guidance classifier's commands: `classifiers` (train-, import-, tune-classifier), `tuning` (fine-tuning a
guide on the model's own x̂0), `check_classifier` (accuracy and fooling gap) and `labelled` (labelled image
sets from folders, manifests or the built-in world). They use the method at the top of `higfa/` and a backend
from `higfa.backends`; nothing here is imported by the method.
"""
