"""Verifiable-reward text tasks: verifiers, the countdown parser, splits, CustomTask, the registry."""

import json

import pytest

from envs.text_tasks import (ArithmeticTask, CountdownTask, CustomTask, ExpressionError, Problem, make_task,
                             parse_expression)

MALICIOUS = ["__import__('os').system('echo hi')", "=__import__('os')", "__builtins__.open('x')", "=1;import os"]


@pytest.fixture(scope="module")
def arithmetic():
    return ArithmeticTask(num_train=300, num_test=60, max_digits=3, ops="+-", seed=1)


@pytest.fixture(scope="module")
def countdown():
    return CountdownTask(num_train=300, num_test=60, seed=1)


# ------------------------------------------------------------------------------------------- arithmetic

def test_arithmetic_worked_format():
    assert ArithmeticTask.worked(37, 85, "+") == "7+5+0=12;3+8+1=12;=122"
    assert ArithmeticTask.worked(7, 85, "+") == "7+5+0=12;0+8+1=09;=92"
    assert ArithmeticTask.worked(52, 17, "-") == "2-7-0=15;5-1-1=03;=35"
    assert ArithmeticTask.worked(100, 1, "-") == "0-1-0=19;0-0-1=19;1-0-1=00;=99"


def test_arithmetic_solutions_are_rewarded(arithmetic):
    for p in arithmetic.train + arithmetic.test:
        assert arithmetic.reward(p, arithmetic.solution(p)) == 1.0
        assert str(true_value(p.prompt)) == p.answer
        assert p.difficulty == max(len(x) for x in p.prompt[:-1].replace("-", "+").split("+"))
    assert arithmetic.levels == [1, 2, 3]


def true_value(prompt: str) -> int:
    """The true value of an ``a+b=`` / ``a-b=`` prompt, computed without the task's code."""
    op = "+" if "+" in prompt else "-"
    a, b = prompt[:-1].split(op)
    return int(a) + int(b) if op == "+" else int(a) - int(b)


@pytest.mark.parametrize("response, reward", [
    ("7+5+0=12;3+8+1=12;=122", 1.0),
    ("=122", 1.0),
    ("wrong steps 1+1=3;= 1 2 2 ", 1.0),  # only the final answer counts; spaces are stripped
    ("=121", 0.0),
    ("122", 0.0),  # no "="
    ("=122;", 0.0),
    ("=122=", 0.0),  # the LAST "=" has nothing after it
    ("=+122", 0.0),
    ("=12a", 0.0),
    ("", 0.0),
    *[(m, 0.0) for m in MALICIOUS],
])
def test_arithmetic_verifier(response, reward):
    task = ArithmeticTask(num_train=5, num_test=0, max_digits=1)
    assert task.reward(Problem("37+85=", "122", 2, 0), response) == reward


def test_arithmetic_negative_answer_parses():
    task = ArithmeticTask(num_train=5, num_test=0, max_digits=1)
    assert task.reward(Problem("x", "-3", 1, 0), "=-3") == 1.0


# ------------------------------------------------------------------------------------------- countdown

@pytest.mark.parametrize("text, value", [
    ("2+3*4", 14), ("(2+3)*4", 20), ("2*3+4", 10), ("8-3-2", 3), ("8-(3-2)", 7), ("8/2/2", 2), ("8/(4/2)", 4),
    ("((7))", 7), (" 3 * 7 + 5 ", 26), ("12-3*2", 6), ("0", 0),
])
def test_parser_values(text, value):
    assert parse_expression(text)[0] == value


@pytest.mark.parametrize("text", ["", "2+", "(2+3", "2+3)", "2**3", "-3+5", "03+1", "7/2", "1/0", "2 3", "2.5",
                                  "a", "(" * 40 + "1" + ")" * 40, "1+" * 200 + "1", *MALICIOUS])
def test_parser_rejects(text):
    with pytest.raises(ExpressionError):
        parse_expression(text)


def test_parser_literals_in_order():
    assert parse_expression("(9-5)*1")[1] == [9, 5, 1]


@pytest.mark.parametrize("prompt, response, reward", [
    ("3,5,7>26:", "3*7+5", 1.0),
    ("3,5,7>26:", "5+7*3", 1.0),
    ("3,5,7>26:", "(3+5)*7", 0.0),  # 56
    ("3,5,7>26:", "3*7+5+5-5", 0.0),  # 5 reused
    ("3,5,7>13:", "3+3+7", 0.0),  # 3 given once, used twice
    ("3,3,5>11:", "3+3+5", 1.0),  # given twice, used twice
    ("3,5,7>26:", "3*7+2+3", 0.0),  # 2 is not given
    ("3,5,7>26:", "26", 0.0),
    ("7,2,4>14:", "7*2", 1.0),  # a subset is fine
    ("7,2,4>14:", "7*4/2", 1.0),
    ("7,2,4>14:", "7/2*4", 0.0),  # 7/2 is inexact
    ("3,5,7>26:", "3*7+5\n", 0.0),
    *[("3,5,7>26:", m, 0.0) for m in MALICIOUS],
])
def test_countdown_verifier(countdown, prompt, response, reward):
    assert countdown.reward(Problem(prompt, prompt.split(">")[1][:-1], 3, 0), response) == reward


def test_countdown_problems_are_solvable(countdown):
    for p in countdown.train + countdown.test:
        numbers, target = CountdownTask.parse_prompt(p.prompt)
        assert p.difficulty == len(numbers) and p.answer == str(target)
        assert countdown.reward(p, countdown.solution(p)) == 1.0
    assert countdown.levels == [3, 4]


# ------------------------------------------------------------------------------------------- splits, helpers

@pytest.mark.parametrize("name", ["arithmetic", "countdown"])
def test_split_is_held_out_and_deterministic(name):
    task = make_task(name, num_train=400, num_test=80, seed=3)
    assert len(task.train) == 400 and len(task.test) == 80
    assert not {p.prompt for p in task.train} & {p.prompt for p in task.test}
    assert len({p.id for p in task.train + task.test}) == 480
    again = make_task(name, num_train=400, num_test=80, seed=3)
    assert again.train == task.train and again.test == task.test
    assert make_task(name, num_train=400, num_test=80, seed=4).train != task.train


def test_small_level_is_shared_not_exhausted():
    task = ArithmeticTask(num_train=600, num_test=60, max_digits=3)  # only 100 one-digit sums exist
    ones_train, ones_test = task.problems_at(1), task.problems_at(1, split="test")
    assert ones_train and ones_test and len(ones_train) + len(ones_test) <= 100
    assert len(task.train) == 600 and len(task.test) == 60
    assert {p.difficulty for p in task.problems_at([2, 3])} == {2, 3}
    with pytest.raises(ValueError, match="split"):
        task.problems_at(1, split="valid")


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown task 'sudoku'"):
        make_task("sudoku")
    with pytest.raises(ValueError, match="no problems"):
        make_task("arithmetic", num_train=0, num_test=0)


# ------------------------------------------------------------------------------------------- custom tasks

def exact(response: str, answer: str) -> bool:
    return response.strip() == answer


def test_custom_from_lists():
    prompts = [f"q{i}" for i in range(50)] + ["q0"]  # a repeated prompt stays on one side
    answers = [str(i) for i in range(50)] + ["0"]
    task = CustomTask.from_lists(prompts, answers, exact, difficulties=[i % 3 for i in range(51)],
                                 test_fraction=0.2, seed=1)
    assert len({p.prompt for p in task.test}) == 10 and len(task.train) + len(task.test) == 51
    q0_sides = [split for split in ("train", "test") for p in getattr(task, split) if p.prompt == "q0"]
    assert len(q0_sides) == 2 and len(set(q0_sides)) == 1
    assert not {p.prompt for p in task.train} & {p.prompt for p in task.test}
    p = task.train[0]
    assert task.reward(p, f" {p.answer} ") == 1.0 and task.reward(p, "nope") == 0.0
    assert task.solution(p) == p.answer and task.levels == [0, 1, 2]


def test_custom_checker_errors_mean_zero():
    task = CustomTask.from_lists(["1+1"], ["2"], lambda r, a: int(r) == int(a), test_fraction=0.0)
    assert task.reward(task.train[0], "2") == 1.0
    assert task.reward(task.train[0], "__import__('os')") == 0.0


def test_custom_input_errors():
    with pytest.raises(ValueError, match="differ in length"):
        CustomTask.from_lists(["a", "b"], ["1"], exact)
    with pytest.raises(ValueError, match="no problems"):
        CustomTask.from_lists([], [], exact)


def test_custom_jsonl_round_trip(tmp_path):
    rows = [{"prompt": f"p{i}", "answer": f"a{i}", "difficulty": i % 2} for i in range(20)]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    task = CustomTask.from_jsonl(path, exact, test_fraction=0.25)
    assert task.name == "mine" and len(task.test) == 5
    got = sorted((p.prompt, p.answer, p.difficulty) for p in task.train + task.test)
    assert got == sorted((r["prompt"], r["answer"], r["difficulty"]) for r in rows)
    path.write_text('{"prompt": "x", "answer": "1"}\n{"prompt": "y"}\n')
    with pytest.raises(ValueError, match=":2:"):
        CustomTask.from_jsonl(path, exact)


def test_no_verifier_runs_model_text():
    """The module that scores model text never calls eval, exec, compile or __import__ (it parses)."""
    import ast
    import inspect

    import envs.text_tasks

    tree = ast.parse(inspect.getsource(envs.text_tasks))
    calls = [n.func for n in ast.walk(tree) if isinstance(n, ast.Call)]
    called = {f.id for f in calls if isinstance(f, ast.Name)}
    called |= {f.attr for f in calls if isinstance(f, ast.Attribute)
               and not (f.attr == "compile" and isinstance(f.value, ast.Name) and f.value.id == "re")}  # regexes
    assert "parse_expression" in called and not called & {"eval", "exec", "compile", "__import__"}


# ------------------------------------------------------------------------------------------- jsonl (env=jsonl)

def test_checkers_by_name_and_import_path():
    from envs.text_tasks import CHECKERS, exact_match, final_answer_match, resolve_checker

    assert resolve_checker("exact") is exact_match and resolve_checker("final_answer") is final_answer_match
    assert resolve_checker("envs.text_tasks:exact_match") is exact_match and resolve_checker(exact) is exact
    assert final_answer_match("2+2+0=04;=4", "4") and final_answer_match(" 4", "4") and not final_answer_match("=5", "4")
    assert exact_match(" 4 ", "4") and not exact_match("=4", "4") and set(CHECKERS) == {"exact", "final_answer"}
    for bad, message in [("nope", "package.module:function"), ("envs.text_tasks:missing", "cannot import"),
                         ("no_such_module_x:f", "cannot import"), ("envs.text_tasks:TASKS", "not a function")]:
        with pytest.raises(ValueError, match=message):
            resolve_checker(bad)


def test_jsonl_task(tmp_path):
    path = tmp_path / "sums.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{a}*{b}=", "answer": str(a * b), "difficulty": 1 + (a > 4)}) + "\n"
                            for a in range(10) for b in range(10)))
    task = make_task("jsonl", path=str(path), checker="final_answer", test_fraction=0.2)
    assert isinstance(task, CustomTask) and task.name == "sums" and len(task.test) == 20 and task.levels == [1, 2]
    p = task.train[0]
    assert task.reward(p, "=" + p.answer) == 1.0 and task.reward(p, p.answer + "0") == 0.0
    with pytest.raises(ValueError, match="needs env.kwargs.path"):
        make_task("jsonl")
    with pytest.raises(ValueError, match="no such file"):
        make_task("jsonl", path=str(tmp_path / "missing.jsonl"))
