"""Pretrained weights: what each model starts from and where the file comes from.

* ``manifest``: per model name, the published weights (file, origin, hash, size, licence), read from the libraries;
* ``sources``: where a file is found (explicit, weights store, library caches, origin) and fetched, once per node;
* ``verify``: checking a file against its publisher's hash;
* ``ultralytics``: YOLOv5 release files (``yolov5s.pt`` ...): names, known hashes, read without running their
  code and converted to mmyolo's layout;
* ``initial``: ``InitialWeights``, what a model builder is handed (a leaf: the builders import only it);
* ``resolve``: a job's weights, checked on the driver before any trial and fetched by each trial;
* ``store``: filling and checking weights stores (``visionsweep weights pull`` / ``verify``).

This package imports nothing itself, so a model builder importing ``initial`` pulls in no more.
"""
