"""The Hydra entry point: ``python -m rl.train [overrides]`` (or the ``rl-train`` console script).

    python -m rl.train                                  # DDPG on Pendulum-v1, a few minutes on a CPU
    python -m rl.train agent=td3 env=halfcheetah device=cuda
    python -m rl.train -m seed=0,1,2                    # three runs, three output directories
    python -m rl.train trainer.resume=outputs/<date>/<run>   # continue a run

From a notebook, the same run through Hydra's compose API::

    from hydra import compose, initialize_config_module
    from rl.train import run
    with initialize_config_module("conf", version_base="1.3"):
        cfg = compose("config", overrides=["trainer.total_steps=5000"])
    run(cfg, run_dir="runs/notebook")
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

import agents  # noqa: F401  (registers every agent with the config store)
import envs  # noqa: F401  (registers the zoo's environments)
from agents.base import build_agent
from rl import checkpoint
from rl.config import Config, ConfigError, from_yaml, to_config
from rl.trainer import Trainer


def run(cfg: DictConfig | Config, run_dir: str | Path | None = None, total_steps: int | None = None,
        banner: str | None = None) -> dict[str, Any]:
    """Build everything ``cfg`` describes and train. Returns the final step, evaluation and signal (if any).

    With ``cfg.trainer.resume`` set, the run continues from that checkpoint in its own directory with
    its saved config; ``total_steps`` (if given) replaces the saved total. ``banner`` is printed (stderr) once
    everything is built, before training: bad input still ends with its one error line.
    """
    cfg = to_config(cfg)
    resume = None
    if cfg.trainer.resume:
        resume = checkpoint.resolve(cfg.trainer.resume)
        saved = from_yaml(checkpoint.load(resume)["config"])
        trainer = replace(saved.trainer, resume=str(resume), progress=cfg.trainer.progress,
                          total_steps=total_steps or saved.trainer.total_steps)
        cfg, run_dir = replace(saved, trainer=trainer, device=cfg.device), resume.parent
    elif run_dir is not None and (Path(run_dir) / checkpoint.CHECKPOINT_NAME).exists():
        raise ConfigError(f"{run_dir} already holds a run; pick a new directory or resume it with "
                          f"trainer.resume={run_dir}")
    agent = build_agent(cfg)
    trainer = Trainer(cfg, agent, run_dir)
    try:
        if resume is not None:
            trainer.load_checkpoint(resume)
            print(f"resuming {run_dir} at step {trainer.step}", file=sys.stderr)
        elif banner:
            print(banner, file=sys.stderr)
        return trainer.run()
    finally:
        trainer.close()


def _discard_empty_run_dir(run_dir: Path) -> None:
    """After a config error: remove what Hydra wrote into a fresh run dir; leave an older run untouched."""
    hydra_files = {".hydra", "train.log"}
    if not run_dir.is_dir() or {p.name for p in run_dir.iterdir()} - hydra_files:
        return
    shutil.rmtree(run_dir, ignore_errors=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    given = [o.split("=", 1)[1] for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") == "trainer.total_steps"]
    banner = preset_line(dict(hc.runtime.choices), cfg.env.name, cfg.trainer.total_steps)
    try:
        result = run(cfg, run_dir, total_steps=int(given[-1]) if given else None, banner=banner)
    except ConfigError as e:
        _discard_empty_run_dir(run_dir)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if cfg.trainer.resume:  # the run went on in its own directory: drop the one Hydra made for this call
        _discard_empty_run_dir(run_dir)
        run_dir = checkpoint.resolve(cfg.trainer.resume).parent
    if result.get("interrupted"):
        sys.exit(128 + int(result["interrupted"]))
    summary = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()
                        if k != "interrupted")
    print(f"done: {summary} ({run_dir})")


def preset_line(choices: dict[str, Any], env_name: str, total_steps: int) -> str:
    """The one line a run prints at start: the per-pair preset (conf/agent_env/<agent>_<env>.yaml) and experiment
    it uses, or that it has none, and its budget."""
    agent, env = choices["agent"], choices["env"]
    env = env_name if env == "base_env" else env
    conf = Path(__file__).resolve().parent.parent / "conf"
    presets = [f"conf/agent_env/{agent}_{env}.yaml"] if (conf / "agent_env" / f"{agent}_{env}.yaml").exists() else []
    if choices.get("experiment"):
        presets.append(f"conf/experiment/{choices['experiment']}.yaml")
    if presets:
        return f"preset {' + '.join(presets)}: {total_steps:,} env steps"
    return (f"no preset for agent={agent} env={env} (no conf/agent_env/{agent}_{env}.yaml): untuned defaults, "
            f"{total_steps:,} env steps")


_ENV_ID = re.compile(r"env=((?:[\w.-]+/)?[\w.:-]+-v\d+)")


def expand_env_ids(argv: list[str]) -> list[str]:
    """``env=Acrobot-v1`` (a gymnasium id, not a preset in conf/env/) → ``env=base_env env.id=Acrobot-v1
    env.name=acrobot_v1`` (base_env: no conf/agent_env/ preset of another env applies)."""
    out = []
    for arg in argv:
        m = _ENV_ID.fullmatch(arg)
        if m and not (Path(__file__).resolve().parent.parent / "conf" / "env" / f"{m[1]}.yaml").exists():
            out += ["env=base_env", f"env.id={m[1]}", "env.name=" + re.sub(r"[^a-z0-9]+", "_", m[1].lower()).strip("_")]
        else:
            out.append(arg)
    return out


def refuse_existing_run_dir(argv: list[str]) -> None:
    """``hydra.run.dir=<a finished or running run>`` without ``trainer.resume``: stop before Hydra rewrites its
    ``.hydra/`` record (Hydra writes it before any of our code runs)."""
    keys = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("-"))
    run_dir = keys.get("hydra.run.dir")
    if run_dir and not keys.get("trainer.resume") and (Path(run_dir) / checkpoint.CHECKPOINT_NAME).exists():
        print(f"error: {run_dir} already holds a run; pick a new directory or resume it with "
              f"trainer.resume={run_dir}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    sys.argv[1:] = expand_env_ids(sys.argv[1:])
    refuse_existing_run_dir(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
