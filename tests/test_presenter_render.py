"""The footage presenter on the render side: clips looped back and forth to the narration, cropped
around the face, with the face box of every output frame."""

import numpy as np
import pytest

from persona.inference.presenter import Clip, bounce, crop_box, loop
from persona.media import probe, write_video


def test_bounce_covers_the_clip_back_and_forth_without_jumps():
    n, fade = 10, 3
    plan = [bounce(k, n, fade) for k in range(60)]
    shown = [(1 - w) * a + w * b for a, b, w in plan]  # the position each output frame shows, blended
    assert max(abs(x - y) for x, y in zip(shown, shown[1:])) <= 1.5  # never a jump across the clip
    assert min(a for a, _, _ in plan) == 0 and max(a for a, _, _ in plan) == n - 1
    assert all(0 <= a < n and 0 <= b < n and 0 <= w < 1 for a, b, w in plan)
    # without a fade the turning frame is shown once, not twice
    positions = [bounce(k, n, 0)[0] for k in range(2 * n)]
    assert positions[:n + 2] == [*range(n), n - 2, n - 3] and positions[n - 1] == n - 1


@pytest.fixture
def clip(tmp_path):
    frames = []
    for i in range(12):
        f = np.zeros((240, 320, 3), np.uint8)
        f[:, :, 0] = i * 20  # the frame number, readable back in red
        f[60:140, 200:260] = 255  # "the face", right of centre
        frames.append(f)
    path = write_video(tmp_path / "0001.mp4", frames, 25, crf=0, preset="ultrafast")
    return Clip(path, 25.0, (320, 240), 12, [[200, 60, 260, 140]] * 12, "talk.mp4", 3.0)


def test_crop_keeps_the_face_and_the_aspect(clip):
    x0, y0, x1, y1 = crop_box(clip, 9 / 16)
    assert (x1 - x0) / (y1 - y0) == pytest.approx(9 / 16, abs=0.02) and y1 - y0 == 240
    assert x0 <= 200 and x1 >= 260  # the face stays inside
    x0, y0, x1, y1 = crop_box(clip, 16 / 9)
    assert (x0, x1) == (0, 320) and y0 <= 60 and y1 >= 140


def test_loop_makes_any_length_with_boxes(clip, tmp_path):
    frames, boxes, size = loop(clip, 120, 9 / 16, 1080, fade=2)  # 10x the clip
    out = list(frames)
    assert len(out) == len(boxes) == 120 and out[0].shape == (size[1], size[0], 3)
    reds = [int(f[5, 5, 0]) for f in out]
    assert reds[:10] == pytest.approx([i * 20 for i in range(10)], abs=3)  # the clip, forward first
    assert 200 < reds[10] < 220 and 200 < reds[11] < 220  # the last two frames fade into the way back
    assert max(abs(a - b) for a, b in zip(reds, reds[1:])) <= 30  # then back, blended at the turns
    x0 = crop_box(clip, 9 / 16)[0]
    assert boxes[0] == [200 - x0, 60, 260 - x0, 140]  # boxes in the cropped frame's pixels
    small, small_boxes, small_size = loop(clip, 10, 9 / 16, 120, fade=2)
    assert small_size[1] == 120 and small_boxes[0][3] == pytest.approx(70, abs=1)  # scaled with the frame
    write_video(tmp_path / "looped.mp4", out, 25)
    assert probe(tmp_path / "looped.mp4").duration == pytest.approx(4.8, abs=0.05)
