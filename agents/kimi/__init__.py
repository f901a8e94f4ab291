"""Kimi k1.5-style policy optimization for LLMs on verifiable tasks (docs/algorithms.md §4).

    losses       the math as pure functions: kimi_loss, group_advantage, length_penalty, dpo_loss
    sampler      which prompts an iteration trains on: ProblemSampler (curriculum, prioritized)
    collector    one iteration's rollouts: LLMCollector (partial rollouts, repetition cut, rewards), IterationBatch
    policies     the models: TinyPolicy, HFPolicy (LoRA, chat templates), Scorer (the learner's forward)
    agent        Kimi: the update (micro-batches, master weights, DDP / FSDP), warm start, storage, collector
    api          its notebook API and evaluation: from_task, sample, held_out, evaluate, predict, export, load
    long2short   merge_weights, shortest_rejection_sampling, dpo_pairs
"""

from agents.kimi.agent import Kimi, decoder_layers, make_text_task
from agents.kimi.collector import IterationBatch, LLMCollector, first_repetition, repetition_ends
from agents.kimi.config import KimiConfig, LoRAConfig
from agents.kimi.long2short import dpo_pairs, merge_weights, shortest_rejection_sampling
from agents.kimi.losses import dpo_loss, group_advantage, kimi_loss, length_penalty
from agents.kimi.policies import HFPolicy, Scorer, TinyPolicy, load_policy, task_alphabet
from agents.kimi.sampler import ProblemSampler
from rl.config import register_agent

register_agent("kimi", Kimi, KimiConfig)

__all__ = ["HFPolicy", "IterationBatch", "Kimi", "KimiConfig", "LLMCollector", "LoRAConfig", "ProblemSampler", "Scorer",
           "TinyPolicy", "decoder_layers", "dpo_loss", "dpo_pairs", "first_repetition", "group_advantage", "kimi_loss",
           "length_penalty", "load_policy", "make_text_task", "merge_weights", "repetition_ends",
           "shortest_rejection_sampling", "task_alphabet"]
