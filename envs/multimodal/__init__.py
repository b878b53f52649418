"""Multimodal-demonstration tasks on Meta-World's Sawyer scene: each task has two scripted strategies, and the
average of their actions fails by construction (see ``docs/results/multimodal-scenes/``)."""
