"""Dataset jobs: the `higfa` command and what it runs over whole datasets, in two wings over a shared floor
(docs/architecture.md; tests/test_layers.py keeps the wings apart).

Floor: `dataset` (ImageFolder / manifest reading, `read_sources`, `square_image`, `encode_png`, the label rules
shared with the node pack), `prompts` (the `{class}` prompt rule), `model_path` (the CLI's `builtin` as a path),
`distributed` (ranks, shards, SIGTERM) and `evaluate` (does the synthetic data help a classifier: SaSPA's
protocol). Augment wing (`higfa augment`): `settings` (the typed, checked settings), `plan` (items, groups),
`item_sampler` (HiGFA for a group of items), `job` (the run loop, its typed stats), `records` (the output folder:
fingerprint, per-rank records, merge), `safety` (model-file content digests, one lock per shard, folder checks).
Guide wing (train-, import-, check-, tune-classifier): `classifiers`, `check_classifier`, `tuning`,
`second_round` (the second-round recipe as library code), `guides` (what they share), `labelled` (labelled
image sets from folders, manifests or the built-in world). Top: `cli` (the one list of command modules),
`augment` (the augment command's options), `recipe` (`higfa augment --rounds 2`). They use the method at the
top of `higfa/`, a backend from `higfa.backends` and the built-in world; nothing here is imported by those.
"""
