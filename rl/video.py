"""Videos of the trained policy: one deterministic evaluation episode rendered through gymnasium's ``rgb_array``
mode, written as an mp4 (imageio + imageio-ffmpeg, ``pip install '.[video]'``) and as an animated GIF for
TensorBoard. MuJoCo envs render off-screen with ``MUJOCO_GL=egl`` (GPU) or ``MUJOCO_GL=osmesa`` (CPU).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rl.collector import space_spec
from rl.config import ConfigError, EnvConfig

GIF_SIDE = 256  # the TensorBoard GIF is shrunk (by an integer stride) until its longer side is at most this


def _imageio() -> Any:
    try:
        import imageio.v3 as iio
        import imageio_ffmpeg  # noqa: F401  (the mp4 encoder: fail here, not after training)
    except ImportError:
        raise ConfigError("trainer.video=true needs imageio and imageio-ffmpeg: pip install '.[video]'") from None
    return iio


def make_render_env(env: EnvConfig) -> gym.Env:
    """One gymnasium env of ``env`` that renders ``rgb_array`` frames (a clear error if it cannot)."""
    _imageio()
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame-drawn envs (classic control): no display needed
    try:
        made = gym.make(env.id, render_mode="rgb_array", max_episode_steps=env.max_episode_steps, **env.kwargs)
    except (gym.error.Error, TypeError, ValueError, ImportError) as e:
        raise ConfigError(f"trainer.video=true: env {env.id!r} cannot render rgb_array frames ({e})") from None
    if "rgb_array" not in made.metadata.get("render_modes", []):
        made.close()
        raise ConfigError(f"trainer.video=true: env {env.id!r} has no rgb_array render mode")
    if _has_tracking_camera(made) and not any(k in env.kwargs for k in ("camera_name", "camera_id")):
        made.close()  # MuJoCo locomotion: the camera that follows the body, not a fixed one it runs out of
        made = gym.make(env.id, render_mode="rgb_array", max_episode_steps=env.max_episode_steps,
                        camera_name=TRACKING_CAMERA, **env.kwargs)
    return made


TRACKING_CAMERA = "track"  # the camera that follows the torso in gymnasium's MuJoCo locomotion models


def _has_tracking_camera(env: gym.Env) -> bool:
    model = getattr(env.unwrapped, "model", None)
    if model is None or not hasattr(model, "ncam"):
        return False
    import mujoco

    return mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, TRACKING_CAMERA) >= 0


@torch.no_grad()
def record_episode(agent: Any, env: gym.Env, seed: int, device: torch.device,
                   max_steps: int = 10_000) -> tuple[np.ndarray, float]:
    """Frames uint8 [T + 1, H, W, 3] and the return of one greedy episode of ``agent`` on ``env`` from
    ``reset(seed)`` (cut after ``max_steps`` on an env without a time limit)."""
    dtype = space_spec(env.observation_space)[1]
    obs, _ = env.reset(seed=seed)
    frames, total = [env.render()], 0.0
    for _ in range(max_steps):
        action, _ = agent.act(torch.as_tensor(np.asarray(obs)[None], device=device, dtype=dtype), explore=False)
        obs, reward, terminated, truncated, _ = env.step(action[0].cpu().numpy())
        frames.append(env.render())
        total += float(reward)
        if terminated or truncated:
            break
    return np.stack(frames), total


def fps_of(env: gym.Env) -> float:
    return float(env.metadata.get("render_fps") or 30)


def write_mp4(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """H.264 mp4 of ``frames`` (uint8 [T, H, W, 3]; odd sides are padded by one pixel)."""
    iio = _imageio()
    pad = ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.pad(frames, pad), plugin="FFMPEG", fps=fps, codec="libx264", macro_block_size=1)
    return path


def gif_bytes(frames: np.ndarray, fps: float) -> bytes:
    """An animated, looping GIF of ``frames`` shrunk to at most :data:`GIF_SIDE` pixels a side."""
    iio = _imageio()
    stride = max(1, -(-max(frames.shape[1:3]) // GIF_SIDE))
    buffer = io.BytesIO()
    iio.imwrite(buffer, frames[:, ::stride, ::stride], extension=".gif", duration=1000.0 / fps, loop=0)
    return buffer.getvalue()


def gif_summary(tag: str, frames: np.ndarray, fps: float) -> Any:
    """A TensorBoard image summary holding the animated GIF (TensorBoard plays it in its Images tab)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    height, width = frames.shape[1:3]
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif_bytes(frames, fps))
    return Summary(value=[Summary.Value(tag=tag, image=image)])
