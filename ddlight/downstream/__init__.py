"""What a small set is for: the downstream studies of DC/DSA/DM and DDFAD, on any distilled set folder.

* :mod:`ddlight.downstream.continual` — class-incremental learning with the set as the memory
  (``python -m ddlight.downstream.continual``);
* :mod:`ddlight.downstream.nas` — the set as a proxy for architecture search: do networks rank on it as
  they rank on the full training split? (``python -m ddlight.downstream.nas``).

Both take a distilled set (``synset.safetensors`` + ``manifest.json`` from MTT, RFAD, FRAMI or any later
method) and the real DataModule it was distilled from, compare it with real subsets of the same size
(random, herding, k-center: the baselines of :mod:`ddlight.evaluation`), train fresh networks with the
evaluation protocol's recipe and write ``<study>.json``, ``.md`` and ``.png``. The package sits above
:mod:`ddlight.evaluation`; like ``python -m ddlight.evaluation`` its commands are a face that knows
DataModules. Nothing is imported here, so ``python -m`` runs each study module cleanly.
"""
