"""Structured configs: one dataclass per group, registered with Hydra's ConfigStore.

A typo or a wrong type fails while Hydra composes the config (struct mode); values that parse but make no
sense (a negative learning rate, an unknown vectorization mode) fail in ``__post_init__`` with a
:class:`ConfigError` naming the key. YAML files in ``conf/`` hold presets only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """Bad user input: reported as one line and a non-zero exit, never as a traceback."""


def check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def positive(name: str, value: float) -> None:
    check(value > 0, f"{name} must be > 0, got {value}")


def non_negative(name: str, value: float) -> None:
    check(value >= 0, f"{name} must be >= 0, got {value}")


@dataclass
class AgentConfig:
    """Base of every agent's config; ``name`` picks the agent class and names the run directory."""

    name: str = MISSING


@dataclass
class EnvConfig:
    name: str = "pendulum"  # short tag used in run directory names
    id: str = "Pendulum-v1"  # a gymnasium id (or one registered by ``envs``)
    num_envs: int = 1
    vectorization: str = "sync"  # sync | async (gymnasium's workers) | shm (workers over shared memory: envs/shm_vector.py)
    spin_us: Optional[int] = None  # shm: µs the workers and the main process poll before sleeping; None: 2000 where
    # the host has a core for each worker and 4 to spare, else 0 (envs/shm_vector.py: auto_spin_us)
    backend: str = "gymnasium"  # gymnasium: envs on the host | torch: batched envs on the run's device (envs/torch_envs)
    max_episode_steps: Optional[int] = None
    kwargs: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        positive("env.num_envs", self.num_envs)
        check(self.vectorization in ("sync", "async", "shm"),
              f"env.vectorization must be 'sync', 'async' or 'shm', got {self.vectorization!r}")
        if self.spin_us is not None:
            check(self.spin_us >= 0, f"env.spin_us must be >= 0 (0: never poll), got {self.spin_us}")
        check(self.backend in ("gymnasium", "torch"), f"env.backend must be 'gymnasium' or 'torch', got {self.backend!r}")
        if self.backend == "torch":
            from envs.torch_envs import TORCH_ENVS

            check(self.id in TORCH_ENVS, f"env.backend=torch has no batched version of {self.id!r}; "
                                         f"available: {', '.join(sorted(TORCH_ENVS))}")
        if self.max_episode_steps is not None:
            positive("env.max_episode_steps", self.max_episode_steps)


@dataclass
class BufferConfig:
    capacity: int = 1_000_000  # transitions kept by the replay buffer (off-policy agents)
    checkpoint: bool = True  # save the replay buffer with checkpoints (exact resume)

    def __post_init__(self) -> None:
        positive("buffer.capacity", self.capacity)


@dataclass
class TrainerConfig:
    total_steps: int = 20_000  # environment steps (summed over vector envs)
    learning_starts: int = 1_000  # random warm-up steps before the first update (off-policy agents)
    utd_ratio: float = 1.0  # gradient updates per environment step
    batch_size: int = 256
    log_every: int = 1_000  # env steps between scalar logs
    eval_every: int = 5_000  # env steps between evaluations (0: only at the end)
    eval_episodes: int = 10
    eval_background: bool = False  # evaluations in a process of their own (rl/background_eval.py); the loop steps on
    checkpoint_every: int = 10_000  # env steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2  # complete checkpoints kept (the newest, and the ones to fall back to if it is corrupt)
    progress: bool = True  # progress bar (tqdm; works in Jupyter)
    resume: Optional[str] = None  # run directory or checkpoint file to continue from
    compile: bool = False  # CUDA graphs: each update and each exploring action is one graph replay (device=cuda)
    overlap: bool = False  # off-policy agents: update on the GPU while the host steps the envs (each update then
    #                        samples the replay buffer as it was before the newest transition)
    fuse: bool = False  # DDPG/TD3: the losses (forward and backward) compiled by TorchInductor into fewer, fused
    #                     kernels; the same math, other float rounding; a compile of a minute or so at the start
    tf32: bool = False  # CUDA float32 matmuls through TF32 tensor cores (inputs rounded to 10 mantissa bits): faster,
    #                     other numbers; for this run only
    threads: int = 1  # torch CPU threads (0: torch's default); 1 is fastest for small MLPs on a CPU
    video: bool = False  # the final evaluation episode → <run dir>/videos/*.mp4 + TensorBoard (pip install '.[video]')
    video_every: int = 0  # env steps between videos of the evaluation episode during training (0: only the final one)
    num_seeds: int = 1  # K independent agents, seeds seed … seed+K−1, trained as one batch (agents that batch seeds:
    #                     ddpg, td3); total_steps, learning_starts, log/eval/checkpoint intervals count one seed's steps

    def __post_init__(self) -> None:
        positive("trainer.total_steps", self.total_steps)
        non_negative("trainer.learning_starts", self.learning_starts)
        positive("trainer.utd_ratio", self.utd_ratio)
        positive("trainer.batch_size", self.batch_size)
        positive("trainer.log_every", self.log_every)
        non_negative("trainer.eval_every", self.eval_every)
        positive("trainer.eval_episodes", self.eval_episodes)
        non_negative("trainer.checkpoint_every", self.checkpoint_every)
        positive("trainer.keep_checkpoints", self.keep_checkpoints)
        non_negative("trainer.video_every", self.video_every)
        positive("trainer.num_seeds", self.num_seeds)


@dataclass
class LoggerConfig:
    tensorboard: bool = True
    hparams: bool = True  # write the config to TensorBoard's HParams tab


@dataclass
class Config:
    agent: Any = MISSING
    env: EnvConfig = MISSING
    buffer: BufferConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def __post_init__(self) -> None:
        check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
              f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        non_negative("seed", self.seed)

    @property
    def seeds(self) -> list[int]:
        """The seeds of the ``trainer.num_seeds`` agents this run trains: seed, seed + 1, …"""
        return list(range(self.seed, self.seed + self.trainer.num_seeds))


AGENTS: dict[str, tuple[type, type]] = {}  # name -> (agent class, config class)
PRESETS: dict[str, Any] = {}  # name -> that name's default config instance (e.g. td3 = DDPG + three flags)


def register_agent(name: str, agent_cls: type, config_cls: type, preset: Any = None) -> None:
    """Make ``agent=<name>`` a valid choice on the command line and in :func:`from_yaml`.

    ``preset``: a ``config_cls`` instance holding this name's defaults (e.g. TD3 = DDPG + three flags).
    """
    AGENTS[name] = (agent_cls, config_cls)
    PRESETS[name] = preset if preset is not None else config_cls()
    ConfigStore.instance().store(group="agent", name=name, node=preset if preset is not None else config_cls)


def agent_config(name: str, **overrides: Any) -> Any:
    """The config of agent ``name`` (its preset) with ``overrides`` applied; checks run again."""
    if name not in AGENTS:
        raise ConfigError(f"unknown agent {name!r}; known: {', '.join(sorted(AGENTS))}")
    return replace(PRESETS[name], **overrides)


def register_schemas() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(group="env", name="base_env", node=EnvConfig)
    cs.store(group="buffer", name="replay", node=BufferConfig)
    cs.store(group="trainer", name="default", node=TrainerConfig)
    cs.store(group="logger", name="tensorboard", node=LoggerConfig)


register_schemas()


def to_config(cfg: DictConfig | Config) -> Config:
    """Hydra's DictConfig → typed :class:`Config` (runs every ``__post_init__`` check). A key the schema does not
    know (``+agent.foo=1`` gets past Hydra's struct mode) is refused rather than dropped."""
    if isinstance(cfg, Config):
        return cfg
    obj = OmegaConf.to_object(cfg)
    if not isinstance(obj, Config):  # composed without the schema (e.g. a bare dict)
        raise ConfigError("config was not composed from conf/config.yaml's schema")
    unknown = sorted(set(_leaves(OmegaConf.to_container(cfg))) - set(_leaves(OmegaConf.to_container(
        OmegaConf.structured(obj)))))
    check(not unknown, f"unknown config key(s) {', '.join(unknown)}: no such setting (rl-train --help lists them)")
    return obj


def _leaves(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict) or not node:
        return [prefix.rstrip(".")]
    return [k for key, v in node.items() for k in _leaves(v, f"{prefix}{key}.")]


_NOISE = ("full_key:", "object_type=", "reference_type=", "To append to your config", "See https://hydra.cc",
          "Config search path:", "provider=")


def one_line(error: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line messages (and their cause's) as one line; option lists joined by commas."""
    text = str(error) + (f"\n{error.__cause__}" if error.__cause__ is not None else "")
    parts: list[str] = []
    for line in text.splitlines():
        item = line.strip()
        if not item or item.startswith(_NOISE):
            continue
        if line.startswith("\t") and parts:  # an item of the option list the previous line announced
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + item
        else:
            parts.append(item.rstrip("."))
    return "; ".join(parts)


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_yaml(text: str) -> Config:
    """Rebuild a typed :class:`Config` from :func:`to_yaml`'s output (e.g. a checkpoint's)."""
    try:
        raw = OmegaConf.create(text)
    except Exception as e:  # not YAML at all (a damaged or foreign file)
        raise ConfigError(f"the saved config is not readable YAML: {one_line(e)}") from None
    name = OmegaConf.select(raw, "agent.name") if isinstance(raw, DictConfig) else None
    if name not in AGENTS:
        raise ConfigError(f"unknown agent {name!r}; known: {', '.join(sorted(AGENTS))}")
    schema = OmegaConf.structured(Config(agent=AGENTS[name][1](), env=EnvConfig(), buffer=BufferConfig(),
                                         trainer=TrainerConfig(), logger=LoggerConfig()))
    try:
        return to_config(OmegaConf.merge(schema, raw))
    except OmegaConfBaseException as e:  # e.g. a key a newer version added
        raise ConfigError(f"the saved config does not fit this version of actorzoo: {one_line(e)}") from None


def flat(cfg: Config) -> dict[str, Any]:
    """``{"agent.actor_lr": 3e-4, ...}`` of scalar leaves (for TensorBoard's HParams tab)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(key + ".", v)
            elif isinstance(v, (bool, int, float, str)):
                out[key] = v
            elif v is None:
                out[key] = "None"
            else:
                out[key] = str(v)

    walk("", OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True))
    return out
