"""The built-in tiny world: a fine-grained dataset with known answers, and the models trained on it.

`birds` draws the procedural "tiny birds" (families × species told apart by small markings; seeded, no
files); `assets/` holds the models shipped for it (a diffusers folder plus a guidance classifier and an
independent oracle); `models` loads and samples them; `train` retrains them on the CPU (`make train-world`);
`demo` is `make demo`; `metrics` scores samples (fidelity, diversity, contour F1) for the demo and the quality
bench; `scorer` trains the independent scorer that never guides; `tiny_decoder` distils a cheap guidance
decoder. It exists so the method's payoff can be measured without downloads (docs/world.md).
"""
