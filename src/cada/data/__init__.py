"""Data: the shipped sources (:mod:`~cada.data.sources`), jailbreak templates (:mod:`~cada.data.jailbreaks`), the
train/eval overlap checks (:mod:`~cada.data.decontam`), the training pools and their draws
(:mod:`~cada.data.pools`), and the evaluation sets (:mod:`~cada.data.benchmarks`)."""
