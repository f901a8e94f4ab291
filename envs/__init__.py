"""Environments that are not in gymnasium, and env construction from config.

Importing ``envs`` registers the zoo's own gymnasium ids.
"""

from envs.make import make_vec_env, probe_spaces, unknown_env_message  # noqa: F401
from envs import gridworld  # registers GridWorld-v0
from envs import text_tasks  # registers arithmetic, countdown, jsonl (one-step text envs)
