"""Kimi k1.5-style policy optimization of a language model (docs/algorithms.md §4): the learner.

One trainer iteration = one ``collect`` (``agents.kimi.collector``: prompts, k responses each, rewards) + one
``update``. With π_θi the policy at the start of iteration i — the reference, refreshed every iteration:

    loss      L(θ) = (1/N) Σ_j ( r_j − r̄ − τ (log π_θ(y_j|x) − log π_θi(y_j|x)) )²        (agents.kimi.losses)
    update    grad_steps Adam steps on L with the same samples; no value network, no reward model.

Its gradient, exactly and at every θ (r and r̄ do not depend on θ):
    ∇L = −2τ · (1/k) Σ_j [ ∇ log π_θ(y_j|x) (r_j − r̄) − (τ/2) ∇ (log π_θ(y_j|x) − log π_θi(y_j|x))² ]  (mean over x),
i.e. gradient descent on L is ascent on §4's "policy gradient with a mean-reward baseline + l2 penalty on the
log-ratio", scaled by 2τ. At θ = θ_i (the first step of an iteration) the penalty term vanishes.

``log π`` is scored with ``logits / temperature``: the distribution the responses were sampled from. Each step runs
over micro-batches of ``micro_batch_size`` responses whose gradients add up to the full batch's; the reference
log-probs ``log π_θi`` are the first step's own (no second model). Low-precision models train float32 master
weights (``rl.optim.MasterAdam``). Under torchrun the learner is wrapped in DDP, or sharded with FSDP2
(``agent.fsdp=true``); see docs/distributed.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from agents.base import Agent
from agents.kimi.api import KimiAPI
from agents.kimi.collector import IterationBatch, LLMCollector
from agents.kimi.config import KimiConfig
from agents.kimi.losses import group_advantage, kimi_loss
from agents.kimi.policies import Scorer, load_policy
from rl import distributed
from rl.config import Config, ConfigError, EnvConfig, check
from rl.lm.sft import WARM_START_STEPS, sft
from rl.logging import MetricAccumulator
from rl.optim import MasterAdam, low_precision

TOKENS_PER_MICRO_BATCH = 16_384  # micro_batch_size=0: responses per pass so that a pass holds about this many tokens


class Kimi(KimiAPI, Agent):
    """Kimi k1.5-style policy optimization of a language model (``agent=kimi env=arithmetic``).

    Notebook::

        from agents import Kimi
        agent = Kimi.from_task("arithmetic", device="cpu", task_kwargs={"max_digits": 4})
        agent.learn(5_000)            # samples (responses); the first call SFT-warm-starts a fresh TinyLM
        agent.evaluate()              # held-out greedy accuracy and mean response length
        agent.predict("37+85=")       # '7+5+0=12;3+8+1=12;=122'
    """

    config_cls = KimiConfig

    def __init__(self, obs_space: Any, action_space: Any, cfg: KimiConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(obs_space, action_space, cfg, device)
        self.group = distributed.current()
        check(not cfg.fsdp or self.group.world > 1,
              "agent.fsdp=true shards the model over the processes of a torchrun run: start it with "
              "torchrun --nproc_per_node=N -m rl.train agent=kimi agent.fsdp=true ...")
        check(not (cfg.fsdp and cfg.lora.r > 0), "agent.fsdp=true with LoRA is not supported: adapters are small, "
                                                 "so train them data-parallel (agent.fsdp=false)")
        check(cfg.prompts_per_iteration % self.group.world == 0,
              f"agent.prompts_per_iteration={cfg.prompts_per_iteration} must be a multiple of the {self.group.world} "
              "processes (each takes an equal share of the prompts; a prompt's k responses stay on one process)")
        self.policy, self.warm = load_policy(cfg, self.device)
        self.model = self.policy.module
        self.learner: Any = None  # Scorer, or its DDP / FSDP wrapper: built by setup() once the weights are final
        self.opt: Any = None
        self.task: Any = None  # a Task object set by from_task (else built from the run config's env)
        self.iteration = 0
        self.start_eval: dict[str, float] = {}
        self.llm_stats = MetricAccumulator()  # learner statistics (llm/log_ratio_sq), read by LLMCollector.pop_logs

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "learner":  # not a registered submodule: its parameters are self.model's
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # -- the learner and its optimizer -----------------------------------------------------------------
    def setup(self) -> None:
        """Build the learner (wrapped for DDP / FSDP under torchrun) and the optimizer over its parameters: once,
        after the warm start (every rank then starts from rank 0's weights)."""
        if self.learner is not None:
            return
        cfg, group = self.cfg, self.group
        scorer = Scorer(self.policy, cfg.temperature, cfg.logprob_chunk)
        if group.world > 1:
            for p in self.model.parameters():
                torch.distributed.broadcast(p.data, src=0)
            if cfg.fsdp:
                from torch.distributed.device_mesh import init_device_mesh
                from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

                mesh = init_device_mesh(self.device.type, (group.world,))
                mp = MixedPrecisionPolicy(param_dtype=getattr(torch, cfg.dtype), reduce_dtype=torch.float32)
                for layer in decoder_layers(self.policy):
                    fully_shard(layer, mesh=mesh, mp_policy=mp)
                scorer = fully_shard(scorer, mesh=mesh, mp_policy=mp)
                with torch.no_grad():  # FSDP takes the first module to run forward as its root: the learner
                    ids = torch.full((1, 2), self.policy.pad_id, dtype=torch.long, device=self.device)
                    scorer(ids, *torch.tensor([[1], [2]], device=self.device))
                scorer.reshard()  # the root keeps its parameters whole after a forward: shard them again
            else:
                from torch.nn.parallel import DistributedDataParallel

                scorer = DistributedDataParallel(scorer, device_ids=[self.device.index] if self.device.type == "cuda"
                                                 else None)
        self.learner = scorer
        params = [p for p in self.model.parameters() if p.requires_grad]
        if low_precision(params):
            self.opt = MasterAdam(params, lr=cfg.lr)
        else:
            self.opt = torch.optim.Adam(params, lr=cfg.lr, fused=self.device.type == "cuda" or None)

    @contextlib.contextmanager
    def full_weights(self) -> Iterator[None]:
        """Inside: every parameter is whole on every rank (FSDP gathers them once, for decoding)."""
        units = self._fsdp_units()
        for unit in units:
            unit.set_reshard_after_forward(False)
            unit.unshard()
        try:
            yield
        finally:
            for unit in units:
                unit.reshard()
                unit.set_reshard_after_forward(True)
            if units:
                getattr(self.policy, "forget_weights", lambda: None)()

    def _fsdp_units(self) -> list[Any]:
        if not self.cfg.fsdp or self.learner is None:
            return []
        from torch.distributed.fsdp import FSDPModule

        return [m for m in self.learner.modules() if isinstance(m, FSDPModule)]

    # -- learner interface ---------------------------------------------------------------------------
    def act(self, obs: Tensor, explore: bool) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError("Kimi acts on text: use predict(prompt) or the collector")

    def use_cuda_graphs(self) -> bool:
        """``trainer.compile=true``: sampling replays each decoding step from a CUDA graph (Hugging Face Llama-family
        policies on CUDA; the update is a variable-shape forward/backward and stays eager)."""
        return self.policy.use_cuda_graphs()

    def sequence_logprobs(self, batch: Mapping[str, Tensor]) -> Tensor:
        """``log π_T`` of each row's segment ``ids[start:end]`` given what precedes it (differentiable)."""
        self.setup()
        return self.learner(batch["ids"].to(self.device), batch["start"].to(self.device), batch["end"].to(self.device))

    def micro_batches(self, batch: Mapping[str, Tensor]) -> list[Tensor | None]:
        """Row indices of each micro-batch, longest responses first (less padding); under torchrun every rank gets
        the same number of micro-batches (None: a pass with no rows of its own, for the collectives' sake)."""
        end = batch["end"]
        size = self.cfg.micro_batch_size or max(1, TOKENS_PER_MICRO_BATCH // max(int(end.max()) if len(end) else 1, 1))
        order = end.argsort(descending=True, stable=True)
        chunks: list[Tensor | None] = list(order.split(size)) if len(order) else []
        count = max(self.group.all_gather(len(chunks)))
        return chunks + [None] * (count - len(chunks))

    def _micro_logp(self, batch: Mapping[str, Tensor], idx: Tensor | None) -> Tensor:
        if idx is None:  # one pad token scored, gradient × 0: this rank joins the others' collectives
            ids = torch.full((1, 2), self.policy.pad_id, dtype=torch.long)
            return 0.0 * self.learner(ids.to(self.device), *torch.tensor([[1], [2]], device=self.device))
        end = batch["end"][idx]
        ids = batch["ids"][idx, : int(end.max())]
        return self.learner(ids.to(self.device, non_blocking=True), batch["start"][idx].to(self.device),
                            end.to(self.device))

    def _accumulating(self, accumulate: bool) -> Any:
        """DDP reduces gradients after the last micro-batch only; FSDP reduce-scatters after each (less memory)."""
        if accumulate and hasattr(self.learner, "no_sync"):
            return self.learner.no_sync()
        return contextlib.nullcontext()

    def update(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        cfg, world = self.cfg, self.group.world
        self.setup()
        total = int(batch["total"])  # responses trained on by all ranks: the loss is their mean
        advantage = group_advantage(batch["reward"], cfg.k).to(self.device)
        micro = self.micro_batches(batch)
        ref: list[Tensor | None] = [None] * len(micro)
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt.zero_grad(set_to_none=True)  # nothing left over from elsewhere (e.g. the SFT warm start)
        self.model.train()  # dropout is off (policies.disable_dropout); train mode lets checkpointing work
        try:
            for step in range(cfg.grad_steps):
                for i, idx in enumerate(micro):
                    with self._accumulating(i < len(micro) - 1):
                        logp = self._micro_logp(batch, idx)
                        if idx is None:
                            logp.sum().backward()
                            continue
                        if step == 0:  # θ = θ_i before the first step: its log-probs are π_θi's, the reference
                            ref[i] = logp.detach()
                        loss, metrics = kimi_loss(logp, ref[i], advantage[idx.to(self.device)], cfg.tau, total)
                        (loss * world).backward()  # DDP / FSDP average the ranks' gradients: × world makes a sum
                    sums += torch.stack([metrics["policy"], metrics["log_ratio_sq"]]).double()
                if cfg.max_grad_norm > 0:
                    nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
        finally:
            self.model.eval()
        self.group.all_reduce(sums)
        self.iteration += 1
        out = {"policy": (sums[0] / cfg.grad_steps).float(), "log_ratio_sq": (sums[1] / cfg.grad_steps).float()}
        self.llm_stats.add({"log_ratio_sq": out["log_ratio_sq"]})
        return out

    def optimizers(self) -> dict[str, Any]:
        self.setup()
        return {"policy": self.opt}

    def counters(self) -> dict[str, int]:
        return {"iteration": self.iteration, "warm": int(self.warm)}

    def load_counters(self, counters: dict[str, int]) -> None:
        self.iteration, self.warm = int(counters["iteration"]), bool(counters["warm"])

    def state(self) -> dict:
        """The policy's weights (a LoRA run: the adapters), the optimizer and counters — whole, on every rank
        (FSDP gathers them; rank 0 writes them)."""
        self.setup()
        if self._fsdp_units():
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                                 get_optimizer_state_dict)

            options = StateDictOptions(full_state_dict=True, cpu_offload=True, broadcast_from_rank0=False)
            modules = {k.removeprefix("model."): v for k, v in get_model_state_dict(self.learner, options=options).items()}
            optimizer = get_optimizer_state_dict(self.learner, self.opt, options=options)
        else:
            modules, optimizer = self.policy.state(), self.opt.state_dict()
        return {"modules": modules, "optimizers": {"policy": optimizer}, "counters": self.counters(),
                "start_eval": dict(self.start_eval)}

    def load_state(self, state: dict) -> None:
        self.load_counters(state["counters"])
        self.start_eval = dict(state.get("start_eval", {}))
        if self.cfg.fsdp and self.group.world > 1:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                                 set_optimizer_state_dict)

            self.setup()
            options = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.learner, {f"model.{k}": v for k, v in state["modules"].items()}, options=options)
            set_optimizer_state_dict(self.learner, self.opt, state["optimizers"]["policy"], options=options)
            return
        self.policy.load_state(state["modules"])
        self.setup()
        self.opt.load_state_dict(state["optimizers"]["policy"])

    def describe_spaces(self) -> dict:
        return {"obs": {"type": "Text"}, "action": {"type": "Text"}}

    # -- task, warm start, storage, collector, evaluator ---------------------------------------------
    def get_task(self, cfg: Config) -> Any:
        if self.task is None:
            self.task = make_text_task(cfg.env)
        return self.task

    def check_fits(self, task: Any) -> None:
        """Every prompt must encode, and the longest prompt + max_response_tokens must fit the policy's context."""
        try:
            longest = max(len(self.policy.encode(p)) for p in task.train + task.test)
        except ValueError as e:
            raise ConfigError(f"the policy's tokenizer cannot encode the task's prompts: {e} (a fresh TinyLM takes "
                              "its alphabet from agent.chars)") from None
        room = self.policy.context - longest
        check(room >= self.cfg.max_response_tokens,
              f"agent.max_response_tokens={self.cfg.max_response_tokens} does not fit: the longest prompt has "
              f"{longest} tokens and the policy's context is {self.policy.context}, leaving {max(room, 0)} for a "
              f"response" + (f" (set agent.max_response_tokens <= {room})" if room > 0 else
                             " (use a model with a longer context, or shorter prompts)"))

    def ensure_warm(self, task: Any) -> None:
        """A fresh TinyLM gets its quick SFT warm start on ``task`` (once); then the starting accuracy is measured."""
        if not self.warm:
            steps = self.cfg.sft_steps or WARM_START_STEPS.get(task.name, 300)
            if self.group.main:
                print(f"kimi: SFT warm start of a fresh TinyLM, {steps} steps on {task.name} "
                      "(give agent.model_path to skip)")
            sft(task, self.model, self.policy.tokenizer, steps, batch_size=self.cfg.sft_batch_size,
                lr=self.cfg.sft_lr, seed=self.iteration, log_every=100, log=print if self.group.main else None)
            self.model.eval()
            self.warm = True
        self.setup()
        if not self.start_eval and task.test:
            self.start_eval = self.held_out(task)
            if self.group.main:
                print(f"kimi: starting held-out accuracy {self.start_eval['accuracy']:.1%} greedy, "
                      f"{self.start_eval['sampled_accuracy']:.1%} sampled "
                      f"({self.cfg.eval_problems or len(task.test)} problems)")

    def make_storage(self, cfg: Config) -> IterationBatch:
        return IterationBatch()

    def make_collector(self, cfg: Config) -> LLMCollector:
        task = self.get_task(cfg)
        self.check_fits(task)
        return LLMCollector(self, task, cfg.seed)

    def make_evaluator(self, cfg: Config) -> Callable[["Kimi"], dict[str, float]]:
        task = self.get_task(cfg)

        def evaluate(agent: "Kimi") -> dict[str, float]:
            agent.ensure_warm(task)
            result = agent.held_out(task) if task.test else {}
            result.update({f"start_{k}": v for k, v in agent.start_eval.items() if k in ("accuracy", "sampled_accuracy")})
            return result

        return evaluate


def decoder_layers(policy: Any) -> nn.ModuleList:
    """The repeated blocks of a policy's model (what FSDP shards one by one)."""
    module = getattr(policy, "lm", policy.module)
    for name in ("blocks", "model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers"):
        obj: Any = module
        for part in name.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ConfigError(f"agent.fsdp: cannot find the decoder layers of {type(module).__name__}")


def make_text_task(env: EnvConfig) -> Any:
    """The task of ``env`` (``env.id`` = task name, ``env.kwargs`` its arguments), with bad input as ConfigError."""
    from envs.text_tasks import make_task

    try:
        task = make_task(env.id, **env.kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"env={env.id}: {e}") from None
    check(len(task.train) > 0, f"env={env.id}: the task has no training problems (raise env.kwargs.num_train)")
    return task
