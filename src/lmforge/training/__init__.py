"""Training components: the one loop, optimizers and schedules, callbacks, devices and data parallelism."""
