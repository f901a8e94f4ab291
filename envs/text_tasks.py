"""Verifiable-reward text tasks for LLM policy optimization (docs/algorithms.md §4).

A task is a set of problems (prompt, reference answer, difficulty) split into ``train`` and a held-out ``test``
(no test prompt appears in train), and a verifier ``reward(problem, response) -> 0.0 | 1.0``. Verifiers only
*parse* model text — nothing a model writes is ever evaluated as Python.

Shipped tasks (``make_task(name, **kwargs)``):

- ``"arithmetic"`` — :class:`ArithmeticTask`, multi-digit addition (optionally subtraction) with worked steps.
- ``"countdown"`` — :class:`CountdownTask`, reach a target from 3–4 small numbers with ``+ - * /``.

- ``"jsonl"`` — :func:`jsonl_task`, your own prompts and answers from a JSONL file, with a checker by name or import path.

Bring your own task with :meth:`CustomTask.from_lists` or :meth:`CustomTask.from_jsonl` (any checker function), or
``env=jsonl`` on the command line.
"""

from __future__ import annotations

import importlib
import json
import random
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import gymnasium as gym

__all__ = [
    "Problem",
    "Task",
    "ArithmeticTask",
    "CountdownTask",
    "CustomTask",
    "make_task",
    "jsonl_task",
    "resolve_checker",
    "CHECKERS",
    "TASKS",
    "parse_expression",
    "ExpressionError",
    "REWARDS",
    "resolve_reward",
    "TextTaskEnv",
]


@dataclass(frozen=True)
class Problem:
    """One prompt with its reference answer; ``id`` is unique within its task (train and test together).

    A chat row carries ``messages`` (``((role, content), ...)``), which a policy encodes with its tokenizer's chat
    template; ``prompt`` is then the last message's content (for display and de-duplication).
    """

    prompt: str
    answer: str
    difficulty: int
    id: int
    messages: Optional[tuple[tuple[str, str], ...]] = None

    def chat(self) -> list[dict[str, str]]:
        """The messages as the dicts ``apply_chat_template`` takes."""
        return [{"role": r, "content": c} for r, c in self.messages or ()]


class Task(ABC):
    """A named set of problems with a held-out split and a 0/1 verifier.

    Subclasses fill ``train`` / ``test`` (through :meth:`__init__`) and implement :meth:`reward`.
    """

    name: str = "task"

    def __init__(self, train: list[Problem], test: list[Problem]) -> None:
        if not train and not test:
            raise ValueError(f"task {self.name!r} has no problems: ask for num_train > 0 or give some prompts")
        self.train, self.test = train, test
        self.rewards: list[tuple[str, RewardFn | None, float]] = [("correct", None, 1.0)]

    @abstractmethod
    def reward(self, problem: Problem, response: str) -> float:
        """1.0 if ``response`` (the model's text after the prompt, end marker removed) solves ``problem``, else 0.0."""

    def set_rewards(self, spec: Mapping[str, float]) -> None:
        """The reward RL maximizes: ``Σ weight · f(prompt, response, answer)`` over ``spec`` = {name: weight},
        where a name is ``correct`` (this task's verifier, 0/1), a function of :data:`REWARDS`, or an import path
        ``package.module:function`` (:func:`resolve_reward`). Default: ``{"correct": 1.0}``."""
        if not spec:
            raise ValueError("rewards: give at least one {name: weight}")
        self.rewards = [(name, None if name == "correct" else resolve_reward(name), float(w)) for name, w in spec.items()]

    def score(self, problem: Problem, response: str) -> tuple[float, float, int]:
        """(correct: the verifier's 0/1, reward: the weighted sum of :attr:`rewards`, errors: how many reward
        functions raised — each of those counts 0)."""
        correct, total, errors = self.reward(problem, response), 0.0, 0
        for _, fn, weight in self.rewards:
            if fn is None:
                total += weight * correct
                continue
            try:
                total += weight * float(fn(problem.prompt, response, problem.answer))
            except Exception:  # a user's reward function choked on model text: 0, counted in llm/reward_errors
                errors += 1
        return correct, total, errors

    def solution(self, problem: Problem) -> str:
        """A correct response for ``problem`` (SFT data). The base version returns the reference answer."""
        return problem.answer

    @property
    def levels(self) -> list[int]:
        """The sorted difficulty levels present in train or test."""
        return sorted({p.difficulty for p in self.train + self.test})

    def problems_at(self, levels: int | Iterable[int], split: str = "train") -> list[Problem]:
        """The problems of ``split`` ("train" or "test") whose difficulty is in ``levels`` (one int or several)."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        wanted = {levels} if isinstance(levels, int) else set(levels)
        return [p for p in getattr(self, split) if p.difficulty in wanted]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, train={len(self.train)}, test={len(self.test)}, levels={self.levels})"


ProblemMaker = Callable[[int, random.Random], tuple[str, str, str]]  # (level, rng) -> (prompt, answer, solution)


def _split_unique(generate: ProblemMaker, levels: Sequence[int], num_train: int, num_test: int,
                  rng: random.Random, tries: int = 200) -> tuple[list[Problem], list[Problem], dict[str, str]]:
    """Draw problems with distinct prompts, an equal share of ``num_train`` and ``num_test`` per level.

    Levels go in order; a level that runs out of new prompts (``tries`` misses in a row — e.g. there are only 100
    one-digit sums) splits what it has in the same train/test proportion and leaves the rest of its share to the
    next levels. Returns (train, test, solutions keyed by prompt), each split shuffled.
    """
    seen: dict[str, str] = {}
    train: list[Problem] = []
    test: list[Problem] = []
    for i, level in enumerate(levels):
        left = len(levels) - i
        q_test, q_train = -(-(num_test - len(test)) // left), -(-(num_train - len(train)) // left)
        pool: list[Problem] = []
        misses = 0
        while len(pool) < q_test + q_train and misses < tries:
            prompt, answer, sol = generate(level, rng)
            if prompt in seen:
                misses += 1
                continue
            misses, seen[prompt] = 0, sol
            pool.append(Problem(prompt, answer, level, id=len(seen) - 1))
        n_test = q_test if len(pool) == q_test + q_train else round(len(pool) * q_test / max(1, q_test + q_train))
        test += pool[:n_test]
        train += pool[n_test:]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test, seen


# --------------------------------------------------------------------------------------------- arithmetic

_FINAL_INT = re.compile(r"-?\d+")


def final_integer(response: str) -> int | None:
    """The integer literal after the LAST ``=`` of ``response`` (spaces stripped), or None if there is none."""
    if "=" not in response:
        return None
    tail = response.rsplit("=", 1)[1].replace(" ", "")
    if not _FINAL_INT.fullmatch(tail) or len(tail) > 50:
        return None
    return int(tail)


class ArithmeticTask(Task):
    """Multi-digit addition (and, with ``ops="+-"``, subtraction) with worked per-column steps.

    Prompt ``"37+85="``. Worked response: one step per column, least significant first, each
    ``"{a}{op}{b}{op}{c}={k}{d};"`` where ``a``, ``b`` are the column's digits (the shorter operand padded with 0),
    ``c`` the carry (borrow) coming in, ``d`` the result digit and ``k`` the carry (borrow) going out — so every
    step has the same width — then ``"="`` and the final result::

        37+85=  ->  "7+5+0=12;3+8+1=12;=122"
        52-17=  ->  "2-7-0=15;5-1-1=03;=35"      (subtraction: a >= b, "15" = borrow 1, digit 5)

    Difficulty = number of digits of the longer operand (1..max_digits). The verifier reads the integer after the
    last ``=``; the steps are not checked.
    """

    name = "arithmetic"

    def __init__(self, num_train: int = 4000, num_test: int = 400, max_digits: int = 3, ops: str = "+",
                 seed: int = 0) -> None:
        if max_digits < 1:
            raise ValueError(f"max_digits must be >= 1, got {max_digits}")
        if not ops or set(ops) - {"+", "-"}:
            raise ValueError(f"ops must be made of '+' and '-', got {ops!r}")
        self.max_digits, self.ops = max_digits, ops
        train, test, _ = _split_unique(self._generate, range(1, max_digits + 1), num_train, num_test,
                                       random.Random(seed))
        super().__init__(train, test)

    def _generate(self, digits: int, rng: random.Random) -> tuple[str, str, str]:
        lo = 0 if digits == 1 else 10 ** (digits - 1)
        a, b = rng.randint(lo, 10**digits - 1), rng.randint(0, 10**digits - 1)
        if rng.random() < 0.5:
            a, b = b, a
        op = rng.choice(self.ops)
        if op == "-" and a < b:
            a, b = b, a
        return f"{a}{op}{b}=", str(a + b if op == "+" else a - b), self.worked(a, b, op)

    @staticmethod
    def worked(a: int, b: int, op: str) -> str:
        """The worked response for ``a op b`` (``op`` in "+-"; for "-", ``a >= b``)."""
        width = max(len(str(a)), len(str(b)))
        da, db = str(a).zfill(width)[::-1], str(b).zfill(width)[::-1]
        steps, carry = [], 0
        for x, y in zip(map(int, da), map(int, db)):
            v = x + y + carry if op == "+" else x - y - carry
            out = 1 if (v >= 10 if op == "+" else v < 0) else 0
            digit = v - 10 * out if op == "+" else v + 10 * out
            steps.append(f"{x}{op}{y}{op}{carry}={out}{digit};")
            carry = out
        return "".join(steps) + f"={a + b if op == '+' else a - b}"

    def solution(self, problem: Problem) -> str:
        m = re.fullmatch(r"(\d+)([+-])(\d+)=", problem.prompt)
        if m is None:
            raise ValueError(f"not an arithmetic prompt: {problem.prompt!r}")
        return self.worked(int(m[1]), int(m[3]), m[2])

    def reward(self, problem: Problem, response: str) -> float:
        value = final_integer(response)
        return float(value is not None and value == int(problem.answer))


# --------------------------------------------------------------------------------------------- countdown

class ExpressionError(ValueError):
    """Model text that is not a well-formed expression (or breaks the game's rules)."""


_TOKEN = re.compile(r"\d+|[-+*/()]")


def parse_expression(text: str, max_len: int = 200, max_depth: int = 16) -> tuple[int, list[int]]:
    """Evaluate an integer expression with ``+ - * /`` and parentheses by recursive descent.

    Grammar: ``expr := term (('+'|'-') term)*``, ``term := factor (('*'|'/') factor)*``,
    ``factor := INT | '(' expr ')'``; ``*`` ``/`` bind tighter, operators are left-associative, there is no unary
    minus, and integers have no leading zeros. Division must be exact (``ExpressionError`` otherwise).
    Returns (value, the integer literals in order). Raises ``ExpressionError`` on anything else.
    """
    if re.search(r"\d\s+\d", text):
        raise ExpressionError(f"numbers separated only by spaces in {text!r}")
    text = text.replace(" ", "")
    if not text or len(text) > max_len:
        raise ExpressionError(f"expression empty or longer than {max_len} characters")
    tokens = _TOKEN.findall(text)
    if "".join(tokens) != text:
        raise ExpressionError(f"unexpected character in {text!r}")
    literals: list[int] = []
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def expr(depth: int) -> int:
        value = term(depth)
        while peek() in ("+", "-"):
            rhs = term(depth) if take() == "+" else -term(depth)
            value += rhs
        return value

    def term(depth: int) -> int:
        value = factor(depth)
        while peek() in ("*", "/"):
            if take() == "*":
                value *= factor(depth)
            else:
                d = factor(depth)
                if d == 0 or value % d:
                    raise ExpressionError(f"division {value}/{d} is not exact")
                value //= d
        return value

    def factor(depth: int) -> int:
        tok = peek()
        if tok is None:
            raise ExpressionError("expression ends early")
        if tok == "(":
            if depth >= max_depth:
                raise ExpressionError(f"parentheses nested deeper than {max_depth}")
            take()
            value = expr(depth + 1)
            if peek() != ")":
                raise ExpressionError("missing ')'")
            take()
            return value
        if tok.isdigit() and (tok == "0" or not tok.startswith("0")) and len(tok) <= 6:
            take()
            literals.append(int(tok))
            return int(tok)
        raise ExpressionError(f"unexpected token {tok!r}")

    value = expr(0)
    if pos != len(tokens):
        raise ExpressionError(f"unexpected token {tokens[pos]!r}")
    return value, literals


class CountdownTask(Task):
    """Reach a target from 3–4 small numbers with ``+ - * /``, each number used at most once.

    Prompt ``"3,5,7>26:"``, response an expression such as ``"3*7+5"``. Reward 1 iff the response parses
    (see :func:`parse_expression`), every literal is one of the given numbers (as a multiset: a number given once
    may appear once), every division is exact and the value equals the target. Problems are made by combining
    the numbers (all of them, or all but one) with random operations, so each is solvable; intermediate values
    stay positive. Difficulty = how many numbers are given.
    """

    name = "countdown"

    def __init__(self, num_train: int = 4000, num_test: int = 400, sizes: Sequence[int] = (3, 4),
                 max_number: int = 9, max_target: int = 100, seed: int = 0) -> None:
        if not sizes or min(sizes) < 2:
            raise ValueError(f"sizes must be >= 2 numbers each, got {sizes}")
        self.max_number, self.max_target = max_number, max_target
        train, test, self._solutions = _split_unique(self._generate, sorted(set(sizes)), num_train, num_test,
                                                     random.Random(seed))
        super().__init__(train, test)

    def _generate(self, size: int, rng: random.Random) -> tuple[str, str, str]:
        while True:
            numbers = [rng.randint(1, self.max_number) for _ in range(size)]
            used = rng.sample(numbers, k=rng.choice([size - 1, size]))
            built = self._combine(used, rng)
            if built is not None and 1 <= built[0] <= self.max_target and built[0] not in numbers:
                value, expression, _ = built
                return f"{','.join(map(str, numbers))}>{value}:", str(value), expression

    @staticmethod
    def _combine(numbers: list[int], rng: random.Random) -> tuple[int, str, int] | None:
        """Fold ``numbers`` into one random expression: (value, text, precedence) or None if a step fails."""
        items = [(n, str(n), 3) for n in numbers]  # precedence: 1 for + -, 2 for * /, 3 for atoms
        while len(items) > 1:
            (a, ta, pa), (b, tb, pb) = items.pop(rng.randrange(len(items))), items.pop(rng.randrange(len(items)))
            op = rng.choice("+-*/")
            if op == "-" and a <= b or op == "/" and (b == 1 or a % b):
                a, ta, pa, b, tb, pb = b, tb, pb, a, ta, pa  # try the other order
                if op == "-" and a <= b or op == "/" and (b == 1 or a % b):
                    return None
            prec = 1 if op in "+-" else 2
            ta = f"({ta})" if pa < prec else ta
            tb = f"({tb})" if pb < prec or (pb == prec and op in "-/") else tb
            value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
            items.append((value, f"{ta}{op}{tb}", prec))
        return items[0]

    @staticmethod
    def parse_prompt(prompt: str) -> tuple[list[int], int]:
        """``"3,5,7>26:"`` -> ([3, 5, 7], 26)."""
        m = re.fullmatch(r"(\d+(?:,\d+)*)>(\d+):", prompt)
        if m is None:
            raise ValueError(f"not a countdown prompt: {prompt!r}")
        return [int(x) for x in m[1].split(",")], int(m[2])

    def solution(self, problem: Problem) -> str:
        if problem.prompt not in self._solutions:
            raise KeyError(f"{problem.prompt!r} was not generated by this task")
        return self._solutions[problem.prompt]

    def reward(self, problem: Problem, response: str) -> float:
        numbers, target = self.parse_prompt(problem.prompt)
        try:
            value, literals = parse_expression(response)
        except ExpressionError:
            return 0.0
        return float(value == target and not Counter(literals) - Counter(numbers))


# --------------------------------------------------------------------------------------------- custom

class CustomTask(Task):
    """A user's task: prompts, reference answers and a checker ``checker(response, answer) -> bool``.

    A checker that raises on malformed model text counts as a wrong answer (reward 0). Build it with
    :meth:`from_lists` or :meth:`from_jsonl`; ``solution`` returns the reference answer (used as SFT target).
    """

    def __init__(self, train: list[Problem], test: list[Problem], checker: Callable[[str, str], bool],
                 name: str = "custom") -> None:
        self.name, self.checker = name, checker
        super().__init__(train, test)

    @classmethod
    def from_lists(cls, prompts: Sequence[str], answers: Sequence[str], checker: Callable[[str, str], bool],
                   difficulties: Sequence[int] | None = None, test_fraction: float = 0.1, seed: int = 0,
                   name: str = "custom") -> "CustomTask":
        """Split ``prompts`` into train/test by distinct prompt (a repeated prompt stays on one side).

        ``difficulties`` defaults to 1 for every problem; ``test_fraction`` in [0, 1) of the distinct prompts go
        to test (at least one when the fraction is > 0 and there are two or more prompts).
        """
        if difficulties is None:
            difficulties = [1] * len(prompts)
        if not (len(prompts) == len(answers) == len(difficulties)):
            raise ValueError(f"prompts, answers and difficulties differ in length: "
                             f"{len(prompts)}, {len(answers)}, {len(difficulties)}")
        if not prompts:
            raise ValueError(f"task {name!r} has no problems: prompts is empty")
        if not 0 <= test_fraction < 1:
            raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
        distinct = sorted(set(prompts))
        random.Random(seed).shuffle(distinct)
        n_test = round(len(distinct) * test_fraction)
        if test_fraction > 0 and len(distinct) > 1:
            n_test = min(max(n_test, 1), len(distinct) - 1)
        held_out = set(distinct[:n_test])
        train, test = [], []
        for i, (p, a, d) in enumerate(zip(prompts, answers, difficulties)):
            (test if p in held_out else train).append(Problem(str(p), str(a), int(d), id=i))
        return cls(train, test, checker, name)

    @classmethod
    def from_jsonl(cls, path: str | Path, checker: Callable[[str, str], bool], test_fraction: float = 0.1,
                   seed: int = 0, name: str | None = None) -> "CustomTask":
        """Read ``{"prompt": ..., "answer": ..., "difficulty": ...}`` lines (difficulty optional, blank lines skipped);
        a chat row gives ``"messages": [{"role": ..., "content": ...}, ...]`` instead of ``"prompt"``."""
        prompts, answers, levels, chats = [], [], [], []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    messages = row.get("messages")
                    if messages is not None:
                        messages = tuple((str(m["role"]), str(m["content"])) for m in messages)
                        if not messages:
                            raise ValueError("'messages' is empty")
                    prompts.append(messages[-1][1] if messages else row["prompt"])
                    answers.append(row["answer"])
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                    raise ValueError(f"{path}:{n}: expected a JSON object with 'prompt' (or 'messages': a list of "
                                     f"{{'role', 'content'}}) and 'answer' ({e})") from e
                levels.append(int(row.get("difficulty", 1)))
                chats.append(messages)
        task = cls.from_lists(prompts, answers, checker, levels, test_fraction, seed, name or Path(path).stem)
        if any(chats):  # Problem ids are the rows' indices
            task.train = [replace(p, messages=chats[p.id]) for p in task.train]
            task.test = [replace(p, messages=chats[p.id]) for p in task.test]
        return task

    def reward(self, problem: Problem, response: str) -> float:
        try:
            return float(bool(self.checker(response, problem.answer)))
        except Exception:  # the checker choked on model text: a wrong answer, not a crash of the run
            return 0.0


# --------------------------------------------------------------------------------------------- registry

def exact_match(response: str, answer: str) -> bool:
    """The response, stripped of surrounding spaces, is the answer."""
    return response.strip() == answer.strip()


def final_answer_match(response: str, answer: str) -> bool:
    """What follows the response's last ``=`` (the whole response if it has none), stripped, is the answer."""
    return response.rsplit("=", 1)[-1].strip() == answer.strip()


CHECKERS: dict[str, Callable[[str, str], bool]] = {"exact": exact_match, "final_answer": final_answer_match}


def resolve_checker(checker: str | Callable[[str, str], bool]) -> Callable[[str, str], bool]:
    """A checker function from a name in :data:`CHECKERS` or a ``"package.module:function"`` import path (the user's
    own code, imported — model text is never run)."""
    if callable(checker):
        return checker
    return CHECKERS[checker] if checker in CHECKERS else _import(checker, "checker")


def jsonl_task(path: str | None = None, checker: str = "final_answer", test_fraction: float = 0.1,
               seed: int = 0) -> CustomTask:
    """A :class:`CustomTask` from a JSONL file of ``{"prompt" | "messages", "answer", "difficulty"?}`` rows and a
    checker (see :func:`resolve_checker`) — the command-line way to bring your own task (``env=jsonl``)."""
    if not path:
        raise ValueError("the jsonl task needs env.kwargs.path=<a .jsonl file of {\"prompt\", \"answer\"} rows>")
    if not Path(path).is_file():
        raise ValueError(f"env.kwargs.path={path}: no such file")
    return CustomTask.from_jsonl(path, resolve_checker(checker), test_fraction, seed)


# --------------------------------------------------------------------------------------------- rewards

RewardFn = Callable[[str, str, str], float]  # (prompt, response, answer) -> reward


def answer_in_response(prompt: str, response: str, answer: str) -> float:
    """1.0 when the reference answer appears anywhere in the response (a lenient partial-credit reward)."""
    return float(answer.strip() in response)


def brevity(prompt: str, response: str, answer: str) -> float:
    """``1 / (1 + len(response) / 100)``: shorter responses earn more (a shaping term, mind its weight)."""
    return 1.0 / (1.0 + len(response) / 100.0)


REWARDS: dict[str, RewardFn] = {"answer_in_response": answer_in_response, "brevity": brevity}


def _import(path: str, what: str) -> Callable:
    """``package.module:function`` (or ``package.module.function``, which a Hydra dict key can hold unescaped)."""
    module, _, name = str(path).partition(":") if ":" in str(path) else str(path).rpartition(".")
    if not module or not name:
        raise ValueError(f"{what} {path!r}: give a known name or 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{what} {path!r}: cannot import it ({e})") from None
    if not callable(fn):
        raise ValueError(f"{what} {path!r} is not a function")
    return fn


def resolve_reward(reward: str | RewardFn) -> RewardFn:
    """A reward function ``f(prompt, response, answer) -> float`` from a name in :data:`REWARDS` or an import
    path ``"package.module:function"`` (the user's own code, imported — model text is never run)."""
    if callable(reward):
        return reward
    return REWARDS[reward] if reward in REWARDS else _import(reward, "reward")


TASKS: dict[str, Callable[..., Task]] = {"arithmetic": ArithmeticTask, "countdown": CountdownTask, "jsonl": jsonl_task}


def make_task(name: str, rewards: Mapping[str, float] | None = None, **kwargs: Any) -> Task:
    """Build a task by name (``"arithmetic"``, ``"countdown"``, or ``"jsonl"``: your file) with its arguments;
    ``rewards`` = {name: weight} (see :meth:`Task.set_rewards`)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)} or build a CustomTask")
    task = TASKS[name](**kwargs)
    if rewards is not None:
        task.set_rewards(dict(rewards))
    return task


# --------------------------------------------------------------------------------------------- gymnasium view

class TextTaskEnv(gym.Env):
    """obs: a prompt, action: a response, reward: the verifier's, one step per episode. Registered as ``arithmetic``,
    ``countdown`` and ``jsonl`` so that code that probes env spaces accepts ``env=arithmetic``."""

    def __init__(self, task: str = "arithmetic", **kwargs: Any) -> None:
        from rl.lm.tokenizer import DEFAULT_CHARS

        self.task_name, self.kwargs, self.task, self.problem = task, kwargs, None, None
        self.observation_space = self.action_space = gym.spaces.Text(256, charset=DEFAULT_CHARS)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        if self.task is None:
            self.task = make_task(self.task_name, **self.kwargs)
        self.problem = self.task.train[int(self.np_random.integers(len(self.task.train)))]
        return self.problem.prompt, {}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        return self.problem.prompt, self.task.score(self.problem, action)[1], True, False, {}


for _name in TASKS:
    if _name not in gym.registry:
        gym.register(_name, entry_point=TextTaskEnv, kwargs={"task": _name})
