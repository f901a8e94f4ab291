"""The textbook grid world (docs/algorithms.md §2; Zhao, *Mathematical Foundations of RL*, ch. 1).

A ``rows × cols`` grid, states numbered row by row (``s = row * cols + col``), five actions
``0 up, 1 right, 2 down, 3 left, 4 stay``. Dynamics are deterministic:

- a move off the grid leaves the agent in place and gives ``r_boundary``;
- entering a forbidden cell is allowed and gives ``r_forbidden``;
- entering (or staying in) the target gives ``r_target``;
- any other move gives ``r_other``.

The target is not terminal: episodes end only by truncation (wrap with gymnasium's ``TimeLimit``,
e.g. ``gymnasium.make("GridWorld-v0", max_episode_steps=100)``).
"""

from __future__ import annotations

from typing import Any, Sequence

import gymnasium
import numpy as np
from gymnasium import spaces

from rl.config import ConfigError

Cell = tuple[int, int]

CLASSIC_FORBIDDEN: tuple[Cell, ...] = ((1, 1), (1, 2), (2, 2), (3, 1), (3, 3), (4, 1))
CLASSIC_TARGET: Cell = (3, 2)

UP, RIGHT, DOWN, LEFT, STAY = range(5)
MOVES: tuple[Cell, ...] = ((-1, 0), (0, 1), (1, 0), (0, -1), (0, 0))  # (d_row, d_col) per action
ARROWS = "↑→↓←○"

# rgb_array colours
_WHITE = np.array([255, 255, 255], np.uint8)
_GRID = np.array([160, 160, 160], np.uint8)
_FORBIDDEN = np.array([255, 170, 60], np.uint8)
_TARGET = np.array([70, 200, 230], np.uint8)
_AGENT = np.array([30, 60, 200], np.uint8)
_ARROW = np.array([25, 25, 25], np.uint8)
_LOW_VALUE = np.array([255, 245, 235], np.float64)  # value shading: lowest value → pale, highest → green
_HIGH_VALUE = np.array([80, 185, 90], np.float64)


class GridWorldError(ConfigError):
    """An invalid grid-world layout (a ``ValueError``; on the command line, one line and exit code 2)."""


class GridWorld(gymnasium.Env):
    """The textbook grid world as a gymnasium env. Observation: ``Discrete(rows*cols)``; action: ``Discrete(5)``."""

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}
    cell_px = 40  # side of one cell in rgb_array images

    def __init__(
        self,
        *,
        size: Sequence[int] = (5, 5),
        forbidden: Sequence[Sequence[int]] = CLASSIC_FORBIDDEN,
        target: Sequence[int] = CLASSIC_TARGET,
        start: Sequence[int] | None = (0, 0),
        r_boundary: float = -1.0,
        r_forbidden: float = -1.0,
        r_target: float = 1.0,
        r_other: float = 0.0,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        rows, cols = (int(n) for n in size)
        if rows <= 0 or cols <= 0:
            raise GridWorldError(f"grid size must be positive, got {tuple(size)}")
        self.rows, self.cols = rows, cols
        self.forbidden: frozenset[Cell] = frozenset(self._cell(c, "forbidden cell") for c in forbidden)
        self.target: Cell = self._cell(target, "target")
        if self.target in self.forbidden:
            raise GridWorldError(f"target {self.target} is also a forbidden cell")
        self.start: Cell | None = None if start is None else self._cell(start, "start")
        self.r_boundary, self.r_forbidden = float(r_boundary), float(r_forbidden)
        self.r_target, self.r_other = float(r_target), float(r_other)
        # Truncation is the caller's job (gymnasium's TimeLimit); kept only for reference.
        self.max_episode_steps = max_episode_steps
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise GridWorldError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode

        self.n_states, self.n_actions = rows * cols, len(MOVES)
        self.observation_space = spaces.Discrete(self.n_states)
        self.action_space = spaces.Discrete(self.n_actions)
        self.state = 0

    # ----------------------------------------------------------------- layout helpers
    def _cell(self, cell: Sequence[int], what: str) -> Cell:
        r, c = (int(x) for x in cell)
        if not (0 <= r < self.rows and 0 <= c < self.cols):
            raise GridWorldError(f"{what} {(r, c)} is outside the {self.rows}x{self.cols} grid")
        return r, c

    def to_state(self, cell: Cell) -> int:
        """(row, col) → state index ``row * cols + col``."""
        return cell[0] * self.cols + cell[1]

    def to_cell(self, s: int) -> Cell:
        """State index → (row, col)."""
        return divmod(int(s), self.cols)

    def model_step(self, s: int, a: int) -> tuple[int, float]:
        """The deterministic dynamics: ``(s, a) → (s', r)``."""
        r, c = self.to_cell(s)
        dr, dc = MOVES[a]
        nr, nc = r + dr, c + dc
        if not (0 <= nr < self.rows and 0 <= nc < self.cols):
            return s, self.r_boundary
        nxt = (nr, nc)
        if nxt == self.target:
            reward = self.r_target
        elif nxt in self.forbidden:
            reward = self.r_forbidden
        else:
            reward = self.r_other
        return self.to_state(nxt), reward

    def transition_model(self) -> tuple[np.ndarray, np.ndarray]:
        """``P[s, a, s']`` (one-hot, shape [S, A, S]) and expected reward ``R[s, a]`` (shape [S, A])."""
        S, A = self.n_states, self.n_actions
        P, R = np.zeros((S, A, S)), np.zeros((S, A))
        for s in range(S):
            for a in range(A):
                s_next, R[s, a] = self.model_step(s, a)
                P[s, a, s_next] = 1.0
        return P, R

    # ----------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[int, dict]:
        super().reset(seed=seed)
        if self.start is None:
            self.state = int(self.np_random.integers(self.n_states))
        else:
            self.state = self.to_state(self.start)
        return self.state, {}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict]:
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r}; expected an int in [0, {self.n_actions})")
        self.state, reward = self.model_step(self.state, int(action))
        return self.state, reward, False, False, {}

    def render(self) -> str | np.ndarray | None:
        """"ansi": text grid (``T`` target, ``#`` forbidden, ``A`` agent, ``.`` other);
        "rgb_array": uint8 image [rows*cell_px, cols*cell_px, 3] with the agent as a blue disc."""
        if self.render_mode == "ansi":
            agent = self.to_cell(self.state)
            return "\n".join(
                " ".join("A" if (r, c) == agent else self._mark((r, c)) for c in range(self.cols))
                for r in range(self.rows)
            ) + "\n"
        if self.render_mode == "rgb_array":
            img = self._draw_cells()
            r, c = self.to_cell(self.state)
            _disc(img, *self._center(r, c), radius=self.cell_px * 0.3, color=_AGENT)
            return img
        return None

    # ----------------------------------------------------------------- policy / value pictures
    def render_policy_values(
        self,
        policy: np.ndarray | None = None,
        values: np.ndarray | None = None,
        mode: str = "ansi",
    ) -> str | np.ndarray:
        """Draw the grid with a policy and/or state values.

        ``policy``: [S, 5] action probabilities or [S] greedy actions; ``values``: [S].
        "ansi": each cell is ``mark arrows value`` (arrows of the most probable actions, ``○`` for stay);
        "rgb_array": uint8 [rows*cell_px, cols*cell_px, 3]; values shade the cells from pale (min v) to green (max v),
        forbidden/target then get a coloured frame; arrows grow with their probability, stay is a ring.
        """
        pi = None if policy is None else self._as_probabilities(policy)
        v = None if values is None else np.asarray(values, dtype=float).reshape(self.n_states)
        if mode == "ansi":
            return self._policy_values_ansi(pi, v)
        if mode == "rgb_array":
            return self._policy_values_rgb(pi, v)
        raise ValueError(f"mode must be 'ansi' or 'rgb_array', got {mode!r}")

    def _as_probabilities(self, policy: np.ndarray) -> np.ndarray:
        policy = np.asarray(policy)
        if policy.shape == (self.n_states,):
            return np.eye(self.n_actions)[policy.astype(int)]
        if policy.shape == (self.n_states, self.n_actions):
            return policy.astype(float)
        raise ValueError(f"policy must have shape [{self.n_states}] or [{self.n_states}, {self.n_actions}], "
                         f"got {list(policy.shape)}")

    def _mark(self, cell: Cell) -> str:
        return "T" if cell == self.target else "#" if cell in self.forbidden else "."

    def _policy_values_ansi(self, pi: np.ndarray | None, v: np.ndarray | None) -> str:
        cells = []
        for s in range(self.n_states):
            text = self._mark(self.to_cell(s))
            if pi is not None:
                best = np.flatnonzero(pi[s] >= pi[s].max() - 1e-9)
                text += " " + "".join(ARROWS[a] for a in best)
            if v is not None:
                text += f" {v[s]:.1f}"
            cells.append(text)
        width = max(len(t) for t in cells)
        return "\n".join(
            " | ".join(cells[r * self.cols + c].ljust(width) for c in range(self.cols)) for r in range(self.rows)
        ) + "\n"

    def _policy_values_rgb(self, pi: np.ndarray | None, v: np.ndarray | None) -> np.ndarray:
        if v is None:
            img = self._draw_cells()
        else:
            img = self._draw_cells(fill=False)
            shade = (v - v.min()) / max(v.max() - v.min(), 1e-12)  # [S] in [0, 1]
            for s in range(self.n_states):
                color = np.rint(_LOW_VALUE + shade[s] * (_HIGH_VALUE - _LOW_VALUE)).astype(np.uint8)
                self._fill_cell(img, *self.to_cell(s), color, inset=1)
            for cell, color in [(self.target, _TARGET)] + [(f, _FORBIDDEN) for f in self.forbidden]:
                self._frame_cell(img, *cell, color, width=4)
        if pi is not None:
            half = self.cell_px / 2
            for s in range(self.n_states):
                r, c = self.to_cell(s)
                cy, cx = self._center(r, c)
                for a, p in enumerate(pi[s]):
                    if p <= 1e-9:
                        continue
                    if a == STAY:
                        _ring(img, cy, cx, radius=half * (0.15 + 0.15 * p), color=_ARROW)
                    else:
                        dy, dx = MOVES[a]
                        length = half * (0.35 + 0.5 * p)
                        _arrow(img, cy, cx, cy + dy * length, cx + dx * length, color=_ARROW)
        return img

    # ----------------------------------------------------------------- pixel drawing
    def _center(self, r: int, c: int) -> tuple[float, float]:
        return (r + 0.5) * self.cell_px, (c + 0.5) * self.cell_px

    def _fill_cell(self, img: np.ndarray, r: int, c: int, color: np.ndarray, inset: int = 0) -> None:
        k = self.cell_px
        img[r * k + inset:(r + 1) * k - inset, c * k + inset:(c + 1) * k - inset] = color

    def _frame_cell(self, img: np.ndarray, r: int, c: int, color: np.ndarray, width: int) -> None:
        k, y0, x0 = self.cell_px, r * self.cell_px + 1, c * self.cell_px + 1
        y1, x1 = y0 + k - 2, x0 + k - 2
        img[y0:y0 + width, x0:x1] = img[y1 - width:y1, x0:x1] = color
        img[y0:y1, x0:x0 + width] = img[y0:y1, x1 - width:x1] = color

    def _draw_cells(self, fill: bool = True) -> np.ndarray:
        """Background image [rows*cell_px, cols*cell_px, 3]: grid lines, and (if ``fill``) coloured special cells."""
        k = self.cell_px
        img = np.empty((self.rows * k, self.cols * k, 3), np.uint8)
        img[:] = _WHITE
        if fill:
            for cell in self.forbidden:
                self._fill_cell(img, *cell, _FORBIDDEN)
            self._fill_cell(img, *self.target, _TARGET)
        img[::k], img[k - 1::k] = _GRID, _GRID
        img[:, ::k], img[:, k - 1::k] = _GRID, _GRID
        return img


def _disc(img: np.ndarray, cy: float, cx: float, radius: float, color: np.ndarray) -> None:
    yy, xx = np.ogrid[:img.shape[0], :img.shape[1]]
    img[(yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= radius ** 2] = color


def _ring(img: np.ndarray, cy: float, cx: float, radius: float, color: np.ndarray, width: float = 1.5) -> None:
    yy, xx = np.ogrid[:img.shape[0], :img.shape[1]]
    d = np.sqrt((yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2)
    img[np.abs(d - radius) <= width / 2] = color


def _line(img: np.ndarray, y0: float, x0: float, y1: float, x1: float, color: np.ndarray) -> None:
    n = int(max(abs(y1 - y0), abs(x1 - x0))) + 1
    ys = np.clip(np.rint(np.linspace(y0, y1, n)).astype(int), 0, img.shape[0] - 1)
    xs = np.clip(np.rint(np.linspace(x0, x1, n)).astype(int), 0, img.shape[1] - 1)
    img[ys, xs] = color


def _arrow(img: np.ndarray, y0: float, x0: float, y1: float, x1: float, color: np.ndarray) -> None:
    """A shaft from (y0, x0) to (y1, x1) plus two head strokes at (y1, x1)."""
    for offset in (-1, 0, 1):  # 3-px-wide shaft
        oy, ox = (0, offset) if x0 == x1 else (offset, 0)
        _line(img, y0 + oy, x0 + ox, y1 + oy, x1 + ox, color)
    dy, dx = y1 - y0, x1 - x0
    norm = max(np.hypot(dy, dx), 1e-9)
    uy, ux = dy / norm, dx / norm
    head = min(6.0, 0.6 * norm + 2.0)
    for side in (-1, 1):  # head strokes go back from the tip at ±45°
        hy = y1 - head * (uy - side * ux) / np.sqrt(2)
        hx = x1 - head * (ux + side * uy) / np.sqrt(2)
        _line(img, y1, x1, hy, hx, color)


if "GridWorld-v0" not in gymnasium.registry:
    gymnasium.register(id="GridWorld-v0", entry_point="envs.gridworld:GridWorld", max_episode_steps=100)
