"""visionsweep.trainers: datasets, transforms, models, training loops, metrics and model packages."""
