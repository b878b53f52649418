"""Meta-World v3: the tasks with point-cloud/image/state observations, their scripted experts and the collector."""
