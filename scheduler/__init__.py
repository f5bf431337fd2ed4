"""visionsweep.scheduler: the job spec, search spaces, the sweep controller and the CLI."""
