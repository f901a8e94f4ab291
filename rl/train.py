"""The Hydra entry point: ``python -m rl.train [overrides]`` (or the ``rl-train`` console script).

    python -m rl.train                                  # DDPG on Pendulum-v1, a few minutes on a CPU
    python -m rl.train agent=td3 env=halfcheetah device=cuda
    python -m rl.train -m seed=0,1,2                    # three runs, three output directories
    python -m rl.train trainer.resume=outputs/<date>/<run>   # continue a run
    torchrun --nproc_per_node=2 -m rl.train agent=kimi ...     # LLM policy optimization on 2 GPUs (docs/distributed.md)

From a notebook, the same run through Hydra's compose API::

    from hydra import compose, initialize_config_module
    from rl.train import run
    with initialize_config_module("conf", version_base="1.3"):
        cfg = compose("config", overrides=["trainer.total_steps=5000"])
    run(cfg, run_dir="runs/notebook")
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import re
import shutil
import sys
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import agents  # noqa: F401  (registers every agent with the config store)
import envs  # noqa: F401  (registers the zoo's environments)
from agents.base import build_agent
from rl import checkpoint, distributed
from rl.config import Config, ConfigError, check, flat, from_yaml, one_line, to_config
from rl.trainer import Diverged, Trainer, with_trainer


# What a resumed run may change: how long it runs, where, and how often it logs, evaluates and checkpoints. All else
# (agent, env, buffer, seed, learning settings) defines the run; a resume that changes it is refused, naming the keys.
RESUME_MAY_CHANGE = ("trainer.total_steps", "device", "trainer.progress", "trainer.threads", "trainer.compile",
                     "trainer.fuse", "trainer.tf32", "trainer.log_every", "trainer.eval_every", "trainer.eval_episodes",
                     "trainer.eval_background", "trainer.checkpoint_every", "trainer.keep_checkpoints",
                     "logger.tensorboard", "logger.hparams", "env.spin_us")


def resume_config(saved: Config, given: Config, keys: Iterable[str] | None = None
                  ) -> tuple[Config, dict[str, tuple[Any, Any]]]:
    """The config a resumed run continues with: ``saved``, with the settings where ``given`` differs applied when
    :data:`RESUME_MAY_CHANGE` lists them; any other difference raises :class:`ConfigError` naming every differing
    key. ``keys``: the keys the user set (each with everything below it, e.g. ``agent``); None: all of them.
    Returns (config, {key: (saved value, new value)} of the changes applied)."""
    old, new = flat(saved), flat(given)

    def under(key: str, given_key: str) -> bool:
        return key == given_key or key.startswith(given_key + ".")

    if keys is not None:
        keys = [k for k in keys if k != "trainer.resume"]
        stray = [g for g in keys if not any(under(k, g) for k in new)]
        check(not stray, f"{', '.join(stray)} cannot apply to a resumed run: it continues with its saved config "
                         "(presets such as +experiment=... only start new runs)")
    diff = {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
            if k != "trainer.resume" and old.get(k) != new.get(k) and (keys is None or any(under(k, g) for g in keys))}
    refused = [k for k in diff if k not in RESUME_MAY_CHANGE]
    check(not refused, "a resumed run keeps its settings, and these differ from the saved ones: "
          + ", ".join(f"{k} (saved {diff[k][0]}, given {diff[k][1]})" for k in refused)
          + f"; on resume only {', '.join(RESUME_MAY_CHANGE)} may change (start a new run to change the others)")
    merged, wanted = OmegaConf.structured(saved), OmegaConf.structured(given)
    for k in diff:
        OmegaConf.update(merged, k, OmegaConf.select(wanted, k), merge=False)
    return to_config(merged), diff


def run(cfg: DictConfig | Config, run_dir: str | Path | None = None, total_steps: int | None = None,
        given: Iterable[str] | None = None, banner: str | None = None) -> dict[str, Any]:
    """Build everything ``cfg`` describes and train. Returns the final step, evaluation and signal (if any).

    With ``cfg.trainer.resume`` set, the run continues from the newest complete checkpoint there, in its own
    directory, with its saved config; settings of ``cfg`` that differ are applied or refused by
    :func:`resume_config` (``given``: the keys the user set; the command line passes its overrides; None
    compares every key). ``total_steps`` (if given) replaces ``cfg.trainer.total_steps``. ``banner`` is printed
    (stdout, rank 0) once everything is built, before a new run trains: bad input still ends with its one error line.
    """
    cfg = to_config(cfg)
    group = distributed.init(cfg.device)
    if total_steps is not None:
        cfg = with_trainer(cfg, total_steps=total_steps)
        given = None if given is None else [*given, "trainer.total_steps"]
    unit, changes = None, {}
    if cfg.trainer.resume:
        unit = checkpoint.load_for_resume(cfg.trainer.resume)
        run_dir = unit.path.parent
        cfg, changes = resume_config(from_yaml(unit.state["config"]), cfg, given)
        cfg = with_trainer(cfg, resume=str(unit.path))
        step = int(unit.state["trainer"]["step"])
        check(step < cfg.trainer.total_steps, f"{run_dir} already reached trainer.total_steps="
              f"{cfg.trainer.total_steps} (step {step}): give a larger trainer.total_steps to continue it")
    elif run_dir is not None and checkpoint.holds_run(run_dir):
        raise ConfigError(f"{run_dir} already holds a run; pick a new directory or resume it with "
                          f"trainer.resume={run_dir}")
    if group.world > 1:
        if cfg.agent.name != "kimi":
            raise ConfigError(f"torchrun runs agent=kimi across processes; agent={cfg.agent.name} trains in one "
                              "process (for many runs at once use a Hydra launcher: hydra/launcher=joblib)")
        cfg = replace(cfg, device=distributed.device_for(group, cfg.device))
    agent = build_agent(cfg)
    trainer = Trainer(cfg, agent, run_dir)
    try:
        if unit is not None:
            trainer.load_checkpoint(unit)
            changed = ", ".join(f"{k} {a} → {b}" for k, (a, b) in changes.items())
            print(f"resuming {run_dir} at step {trainer.step}" + (f" (changed: {changed})" if changed else ""),
                  file=sys.stderr)
        elif banner and group.main:
            print(banner, flush=True)
        return trainer.run()
    finally:
        trainer.close()


def _discard_empty_run_dir(run_dir: Path) -> None:
    """After a config error: remove what Hydra wrote into a fresh run dir; leave an older run untouched."""
    hydra_files = {".hydra", "train.log"}
    if not run_dir.is_dir() or {p.name for p in run_dir.iterdir()} - hydra_files:
        return
    shutil.rmtree(run_dir, ignore_errors=True)


_STAMP: list[datetime.datetime] = []


def _stamp(fmt: str) -> str:
    """``${stamp:%H-%M-%S}`` in conf/config.yaml's run directory: the start time of the run, the same on every rank
    of a torchrun run (rank 0's, shared before Hydra starts)."""
    if not _STAMP:
        _STAMP.append(datetime.datetime.fromisoformat(os.environ["RL_RUN_STAMP"]) if "RL_RUN_STAMP" in os.environ
                      else datetime.datetime.now())
    return _STAMP[0].strftime(fmt)


OmegaConf.register_new_resolver("stamp", _stamp, replace=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    """One run; returns what a sweeper maximizes (``hydra/sweeper=optuna``): the final evaluation's mean return
    (averaged over the seeds of a ``trainer.num_seeds`` run), or held-out accuracy for LLM runs."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    given = [k for k in (o.split("=", 1)[0].lstrip("+~") for o in hc.overrides.task) if not k.startswith("hydra.")]
    banner = preset_line(dict(hc.runtime.choices), cfg.env.name, cfg.trainer.total_steps)
    try:
        result = run(cfg, run_dir, given=given, banner=banner)
    except ConfigError as e:
        _discard_empty_run_dir(run_dir)
        fail(str(e))
    except Diverged as e:
        fail(str(e), code=3)
    if cfg.trainer.resume:  # the run went on in its own directory: drop the one Hydra made for this call
        _discard_empty_run_dir(run_dir)
        run_dir = checkpoint.resolve(cfg.trainer.resume).parent
    if result.get("interrupted"):
        sys.exit(128 + int(result["interrupted"]))
    def show(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, float) else f"[{', '.join(map(show, v))}]" if isinstance(v, list) else f"{v}"

    summary = ", ".join(f"{k}={show(v)}" for k, v in result.items() if k != "interrupted")
    print(f"done: {summary} ({run_dir})")
    objective = result.get("return_mean", result.get("accuracy"))
    if isinstance(objective, list):  # trainer.num_seeds = K: a sweeper maximizes the mean over the K seeds
        objective = sum(objective) / len(objective)
    return None if objective is None else float(objective)


def fail(message: str, code: int = 2) -> NoReturn:
    """The command line's end for bad input (code 2) or a diverged run (3): one line on stderr."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


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
    if run_dir and not keys.get("trainer.resume") and checkpoint.holds_run(run_dir):
        fail(f"{run_dir} already holds a run; pick a new directory or resume it with trainer.resume={run_dir}")


PLUGINS = {"hydra/launcher": {"joblib": "hydra_plugins.hydra_joblib_launcher",
                              "submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
                              "submitit_local": "hydra_plugins.hydra_submitit_launcher",
                              "slurm": "hydra_plugins.hydra_submitit_launcher"},  # conf/hydra/launcher/slurm.yaml
           "hydra/sweeper": {"optuna": "hydra_plugins.hydra_optuna_sweeper"},
           "experiment": {"sweep_ddpg_pendulum": "hydra_plugins.hydra_optuna_sweeper"}}


def check_plugins(argv: list[str]) -> None:
    """``hydra/launcher=joblib`` (or submitit, ``hydra/sweeper=optuna``) without its plugin installed: one line."""
    for arg in argv:
        group, _, name = arg.lstrip("+").partition("=")
        module = PLUGINS.get(group, {}).get(name)
        if module and importlib.util.find_spec(module) is None:
            fail(f"{group}={name} needs the Hydra plugin {module.split('.')[1].replace('_', '-')}, which is not "
                 "installed: pip install 'actorzoo[sweep]'")


def join_ranks(argv: list[str]) -> list[str]:
    """Under torchrun: join the process group before Hydra starts, share rank 0's start time (so that every rank
    resolves the same run directory), and keep Hydra's files and logs to rank 0."""
    if not distributed.launched():
        return argv
    device = next((a.split("=", 1)[1] for a in argv if a.startswith("device=")), "auto")
    try:
        group = distributed.init(device)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    os.environ["RL_RUN_STAMP"] = group.broadcast(datetime.datetime.now().isoformat())
    return argv if group.main else [*argv, "hydra.output_subdir=null", "hydra/job_logging=disabled",
                                    "hydra/hydra_logging=disabled"]


def _raised_in_hydra(e: BaseException) -> bool:
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}hydra{os.sep}" in tb.tb_frame.f_code.co_filename


def main() -> None:
    """``python -m rl.train``: every error of the user's making ends in one line on stderr and exit code 2."""
    sys.argv[1:] = expand_env_ids(sys.argv[1:])
    check_plugins(sys.argv[1:])
    refuse_existing_run_dir(sys.argv[1:])
    sys.argv[1:] = join_ranks(sys.argv[1:])
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors to us instead of printing them over many lines
    try:
        _hydra_main()
    except (HydraException, OmegaConfBaseException) as e:  # composing the config: a typo, a wrong type, a bad group
        fail(one_line(e))
    except ValueError as e:
        if not _raised_in_hydra(e):
            raise
        fail(one_line(e))  # Hydra's own command-line checks (e.g. -m together with --cfg)
    except OSError as e:  # Hydra making or writing the run directory (a file in the way, read-only, disk full)
        fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
    except KeyboardInterrupt:
        fail("interrupted twice: stopped at once, without a new checkpoint (the newest complete one is intact)",
             code=130)
    finally:
        distributed.shutdown()
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error


if __name__ == "__main__":
    main()
