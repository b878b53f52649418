"""Online fine-tuning of a trained one-step policy in the simulator (``mfp finetune``).

Two methods, chosen by ``finetune.method``: PPO on the one-step action head with a Gaussian
exploration layer (DMPO-style), and noise-space steering, where a small actor picks the head's
input noise and the pretrained head stays frozen (DSRL-style). See DESIGN section 10.
"""
