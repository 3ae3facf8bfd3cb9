"""The interp core: what every interp command (and the lm-eval model) is built on.

* :mod:`interp.core.architectures`  the one architecture table: per model type, module paths and
  the quirks that change the maths, as data (:mod:`interp.core.sites` reads the head sites from it);
* :mod:`interp.core.model`  nnsight wrapping, frozen(), remote (NDIF) checks;
* :mod:`interp.core.loader`  one model loader (embedded name | folder | Hub id; dtype; device cpu |
  cuda | cuda:N | auto via accelerate's device_map; nnsight-wrapped or plain; remote NDIF);
* :mod:`interp.core.encode`  one encoder of GAR prompts (token ids, in-context answer tokens, left
  padding with position_ids, cls prompts with twins);
* :mod:`interp.core.select`  one task selector grammar and the seeded record choosers;
* :mod:`interp.core.outputs` atomic writes, npz, versions, timings, the checkpointed batch loop.

Importing this package is light: torch and transformers are imported inside the functions.
"""
