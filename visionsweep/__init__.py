"""visionsweep's Python API.

Two ways in:

* **The service SDK's shape**, so a notebook migrates by its imports alone: ``visionsweep.automl`` (the image jobs,
  ``SearchSpace``, the primary-metric enums), ``visionsweep.sweep`` (distributions and early-termination
  policies), ``visionsweep.Input``, ``visionsweep.constants`` (``AssetTypes``, ``InputOutputModes``),
  ``visionsweep.MLClient`` (``jobs``, ``online_endpoints``, ``online_deployments``) and
  ``visionsweep.entities`` (``ManagedOnlineEndpoint``, ``ManagedOnlineDeployment``, ``ProbeSettings`` ...).
* **Ray's shape**: ``result = visionsweep.run(job)`` runs a job here and returns its best trial, leaderboard and
  model package (:class:`visionsweep.results.Result`); ``visionsweep.check_data(job)`` checks its data first
  (duplicates, leaks, balance, boxes, and with ``deep=True`` likely wrong labels).

A job object and its CLI job file are one job: ``job.dump("job.yml")`` writes the file ``visionsweep run`` and the
service's CLI take, and ``visionsweep.load_job("job.yml")`` gives the job object back.
"""

from visionsweep import automl, constants, entities, sweep
from visionsweep.automl import load_job
from visionsweep.client import MLClient
from visionsweep.inputs import Input
from visionsweep.results import Result
from visionsweep.running import check_data, run

__all__ = ["Input", "MLClient", "Result", "automl", "check_data", "constants", "entities", "load_job", "run",
           "sweep"]
