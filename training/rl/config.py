"""Typed schema of `mfp finetune` (hydra composes ``configs/finetune.yaml`` and one ``configs/finetune/<method>.yaml``).

Defaults follow DESIGN section 10 (DMPO / ReinFlow for PPO, DSRL for noise-space steering), scaled to a CPU budget
where the papers' figures do not fit (their env-step budgets are millions).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from core.errors import ConfigError, check_choice, check_int, check_number
from training.config import WandbConfig
from training.distributed import parse_device

METHODS = ("ppo", "steering")


@dataclass
class PPOConfig:
    """PPO on the one-step policy (ReinFlow / DMPO): a chunk is one action, a learned bounded std makes it Gaussian."""

    n_envs: int = 8
    # Chunks per env per iteration; 0 = one episode's worth (the step limit over the executed actions per chunk).
    chunks_per_iteration: int = 0
    gamma: float = 0.99  # per chunk
    gae_lambda: float = 0.95
    clip: float = 0.05
    epochs: int = 5
    minibatch: int = 128
    # DMPO's Can config uses 2.5e-6. 3e-5 collapsed coffee-pull in three updates (eval 0/20 from 6/20); 3e-6 with a
    # frozen encoder, 5 warm-up iterations and anchor 0.1 kept it (34 -> 38 %): docs/results/finetune-coffee-pull/.
    actor_lr: float = 3e-6
    critic_lr: float = 3e-4
    std_lr: float = 3e-4
    # Exploration std per action dim, in normalized action units (the policy's [-1, 1]); DMPO clamps to [0.05, 0.12].
    std_min: float = 0.05
    std_max: float = 0.12
    # Behaviour-cloning anchor: MSE between the fine-tuned and the pre-trained chunk at the same starting noise,
    # weight decayed linearly from bc_weight to bc_weight_final over bc_decay_iterations.
    bc_weight: float = 0.1
    bc_weight_final: float = 0.0
    bc_decay_iterations: int = 50
    entropy: float = 0.01
    value_coef: float = 0.5
    critic_warmup_iterations: int = 5
    max_grad_norm: float = 1.0
    train_encoder: bool = False

    def __post_init__(self) -> None:
        check_int("ppo.n_envs", self.n_envs, 1)
        check_int("ppo.chunks_per_iteration", self.chunks_per_iteration, 0)
        for name in ("epochs", "minibatch"):
            check_int(f"ppo.{name}", getattr(self, name), 1)
        for name in ("critic_warmup_iterations", "bc_decay_iterations"):
            check_int(f"ppo.{name}", getattr(self, name), 0)
        for name in ("gamma", "gae_lambda"):
            check_number(f"ppo.{name}", getattr(self, name), 0.0, 1.0)
        for name in ("clip", "actor_lr", "critic_lr", "std_lr", "std_min", "max_grad_norm"):
            check_number(f"ppo.{name}", getattr(self, name), 0.0, low_open=True)
        for name in ("bc_weight", "bc_weight_final", "entropy", "value_coef"):
            check_number(f"ppo.{name}", getattr(self, name), 0.0)
        check_number("ppo.std_max", self.std_max, self.std_min)


@dataclass
class SteeringConfig:
    """Noise-space steering (DSRL): the generator frozen, an off-policy SAC actor chooses its starting noise."""

    n_envs: int = 4
    noise_bound: float = 1.5  # |w| <= bound per dimension (DSRL)
    hidden_dim: int = 256
    buffer_size: int = 100_000
    batch_size: int = 256
    updates_per_step: int = 1  # gradient steps per chunk collected per env
    learning_starts: int = 200  # chunks collected with uniform noise before the first update
    gamma: float = 0.99
    tau: float = 0.005
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    init_temperature: float = 0.1
    chunks_per_iteration: int = 0  # per env; 0 = one episode's worth

    def __post_init__(self) -> None:
        for name in ("n_envs", "hidden_dim", "buffer_size", "batch_size", "updates_per_step"):
            check_int(f"steering.{name}", getattr(self, name), 1)
        check_int("steering.learning_starts", self.learning_starts, 0)
        check_int("steering.chunks_per_iteration", self.chunks_per_iteration, 0)
        check_number("steering.noise_bound", self.noise_bound, 0.0, low_open=True)
        check_number("steering.gamma", self.gamma, 0.0, 1.0)
        check_number("steering.tau", self.tau, 0.0, 1.0, low_open=True)
        for name in ("actor_lr", "critic_lr", "init_temperature"):
            check_number(f"steering.{name}", getattr(self, name), 0.0, low_open=True)


@dataclass
class FinetuneEvalConfig:
    """The honest protocol: fixed evaluation seeds, the final weights, the benchmark's horizon."""

    episodes: int = 50
    every_iterations: int = 0  # periodic evaluations (0: only at the end)
    periodic_episodes: int = 20
    workers: int = 2

    def __post_init__(self) -> None:
        for name in ("episodes", "every_iterations", "periodic_episodes", "workers"):
            check_int(f"eval.{name}", getattr(self, name), 0)


@dataclass
class FinetuneConfig:
    """`mfp finetune`: a one-step policy checkpoint fine-tuned online in its task's simulator."""

    checkpoint: str = "???"
    task: str = ""  # "" = the checkpoint's own task
    method: str = "ppo"
    ppo: PPOConfig = field(default_factory=PPOConfig)
    steering: SteeringConfig = field(default_factory=SteeringConfig)
    # sparse: 1 at success, which ends the episode; dense: the env's reward / dense_scale, no end at success.
    reward: str = "sparse"
    dense_scale: float = 10.0
    max_episode_steps: int = 0  # 0 = the checkpoint's task limit (or the suite's horizon)
    env_steps: int = 200_000  # the budget: stops after the iteration that reaches it
    # Observation keys concatenated into the critic's state (an asymmetric critic may read the simulator state).
    critic_keys: list[str] = field(default_factory=lambda: ["full_state"])
    eval: FinetuneEvalConfig = field(default_factory=FinetuneEvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    output_dir: str = "runs/finetune/${method}-seed${seed}"
    seed: int = 0
    device: str = "cpu"
    torch_threads: int = 1
    checkpoint_every: int = 1  # iterations
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.checkpoint in ("", "???"):
            raise ConfigError("checkpoint must name the policy directory to fine-tune")
        check_choice("method", self.method, METHODS)
        check_choice("reward", self.reward, ("sparse", "dense"))
        check_number("dense_scale", self.dense_scale, 0.0, low_open=True)
        check_int("max_episode_steps", self.max_episode_steps, 0)
        check_int("env_steps", self.env_steps, 1)
        check_int("seed", self.seed, 0)
        check_int("torch_threads", self.torch_threads, 1)
        check_int("checkpoint_every", self.checkpoint_every, 1)
        if not self.critic_keys:
            raise ConfigError("critic_keys must name at least one low-dimensional observation")
        parse_device(self.device, "device")


ConfigStore.instance().store(name="finetune_schema", node=FinetuneConfig)
