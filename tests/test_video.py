"""trainer.video=true: the final evaluation episode as an mp4 in the run dir and a GIF in TensorBoard (classic
control and the grid world on a CPU; MuJoCo on the device with MUJOCO_GL=egl)."""

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import run_cli

iio = pytest.importorskip("imageio.v3")
pytest.importorskip("imageio_ffmpeg")


@pytest.mark.parametrize("pair,frames,side", [
    (["agent=a2c", "env=cartpole"], None, (400, 600)),  # CartPole renders 600×400 (W×H)
    (["agent=qlearning", "env=gridworld", "env.max_episode_steps=30"], 31, (200, 200)),  # 5×5 cells of 40 px
])
def test_video_of_the_final_evaluation_episode(tmp_path, pair, frames, side):
    proc = run_cli(*pair, "trainer.total_steps=512", "trainer.video=true", "trainer.video_every=256",
                   "trainer.eval_every=0", "trainer.progress=false", "device=cpu", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    videos = sorted((tmp_path / "run" / "videos").iterdir())
    assert [v.name for v in videos] == ["step_256.mp4", "step_512.mp4"]  # the periodic one and the final one
    clip = iio.imread(videos[-1], plugin="FFMPEG", index=None)
    assert clip.shape[1:] == (*side, 3) and clip.dtype == np.uint8 and clip.std() > 0
    ea = EventAccumulator(str(tmp_path / "run"), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    gifs = ea.Images("eval/video")
    assert [g.step for g in gifs] == [256, 512] and gifs[-1].encoded_image_string[:6] == b"GIF89a"
    ret = ea.Scalars("eval/video_return")[-1].value
    if frames is not None:  # the grid world's episode: its time limit, plus the first frame
        assert clip.shape[0] == frames
    else:  # CartPole: one frame per step and the first; +1 reward per step
        assert clip.shape[0] == ret + 1


def test_video_needs_an_env_that_renders(tmp_path):
    proc = run_cli("agent=kimi", "env=arithmetic", "trainer.video=true", "trainer.progress=false", "device=cpu",
                   cwd=tmp_path)
    assert proc.returncode == 2 and "trainer.video=true" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.gpu
def test_video_of_halfcheetah_on_the_device(tmp_path):
    """MuJoCo renders off-screen through EGL on the GPU machine: 1000 steps + the first frame, 480×480."""
    pytest.importorskip("mujoco")
    proc = run_cli("agent=td3", "env=halfcheetah", "device=cuda", "trainer.total_steps=2000",
                   "trainer.learning_starts=1000", "trainer.video=true", "trainer.eval_every=0",
                   "trainer.eval_episodes=1", "trainer.checkpoint_every=0", "trainer.progress=false",
                   "hydra.run.dir=run", cwd=tmp_path, env={"MUJOCO_GL": "egl"})
    assert proc.returncode == 0, proc.stderr
    assert "preset conf/agent_env/td3_halfcheetah.yaml: 2,000 env steps" in proc.stdout
    clip = iio.imread(tmp_path / "run" / "videos" / "step_2000.mp4", plugin="FFMPEG", index=None)
    assert clip.shape == (1001, 480, 480, 3) and clip.std() > 0
    ea = EventAccumulator(str(tmp_path / "run"), size_guidance={"images": 0})
    ea.Reload()
    assert [g.step for g in ea.Images("eval/video")] == [2000]


@pytest.mark.parametrize("env_id", ["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5"])
def test_mujoco_videos_follow_the_body(env_id):
    """A MuJoCo locomotion env renders from its "track" camera (it follows the torso; the default free camera
    stays put and a fast runner leaves the frame); a camera the user chose in env.kwargs is kept."""
    mujoco = pytest.importorskip("mujoco")
    from rl.config import EnvConfig
    from rl.video import make_render_env

    env = make_render_env(EnvConfig(id=env_id))
    model = env.unwrapped.model
    assert env.unwrapped.mujoco_renderer.camera_id == mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "track") >= 0
    env.close()
    env = make_render_env(EnvConfig(id=env_id, kwargs={"camera_id": -1}))
    assert env.unwrapped.mujoco_renderer.camera_id == -1
    env.close()
