"""visionsweep.cluster: connecting to a Ray cluster (embedded local, or RAY_ADDRESS)."""
