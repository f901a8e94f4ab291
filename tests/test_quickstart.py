"""examples/quickstart.ipynb runs top to bottom (with the small budgets of QUICKSTART_SMALL=1) and shows what it
promises: DDPG's run and its learning curve, save/load/predict, the grid-world agent's values and policy, Kimi's
answer to an arithmetic prompt."""

import ast
import re

import pytest

from tests.conftest import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def outputs(cell) -> tuple[str, str, set[str]]:
    """What a cell printed to stdout, the text of the value it returned, and the MIME types of its outputs."""
    printed, returned, kinds = [], [], set()
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            printed += [out["text"]] if out["name"] == "stdout" else []
        else:
            kinds.update(out.get("data", {}))
            returned.append(out.get("data", {}).get("text/plain", ""))
    return "".join(printed), "".join(returned), kinds


def printed_dict(text: str, key: str) -> dict:
    """The dict literal printed on the line holding ``key``."""
    line = next(line for line in text.splitlines() if key in line)
    return ast.literal_eval(line[line.index("{"):])


def test_quickstart_notebook_runs_and_shows_its_results(tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKSTART_SMALL", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    cells = [c for c in nb.cells if c.cell_type == "code"]
    (_, learned, _), (_, _, curve), (evaluated, _, _), (grid, _, _), (drawn, _, picture), (kimi, _, _) = \
        map(outputs, cells[1:])

    assert ast.literal_eval(learned)["step"] == 1500  # DDPG_STEPS of the small budget
    assert "image/png" in curve  # the learning curve, drawn inline
    assert (tmp_path / "runs" / "quickstart" / "ddpg.pt").exists()
    evaluation = printed_dict(evaluated, "return_mean")
    assert -3254 < evaluation["return_mean"] <= 0  # Pendulum: reward ≥ −(π² + 0.1·8² + 0.001·2²) = −16.27, 200 steps
    assert re.search(r"torque: \[(-?[\d.]+)\] after load: \[\1\]", evaluated)  # same action after save/load

    result = printed_dict(grid, "charts/value_error")
    # v* of the classic world spans 5.8 … 10 (γ = 0.9): after 30k steps Q-learning's values are within 1 of it
    assert result["charts/value_error"] < 1.0 and 0 <= result["charts/optimal_cells"] <= 25
    rows = [r for r in drawn.splitlines() if "|" in r]
    assert len(rows) == 5 and all(r.count("|") == 4 for r in rows) and "T" in drawn  # 5×5 cells, the target
    assert "image/png" in picture

    held_out = printed_dict(kimi, "'accuracy':")
    assert 0 <= held_out["accuracy"] <= 1
    answer = kimi.strip().splitlines()[-1]
    assert re.fullmatch(r"[0-9+;=]+", answer), answer  # the worked-steps format: '7+5+0=12;3+8+1=12;=122'
