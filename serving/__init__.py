"""visionsweep.serving: loading a model package and answering prediction requests."""
