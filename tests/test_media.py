import numpy as np
import pytest

from persona.errors import PersonaError
from persona.media import av_open, probe, read_audio, stream_durations, write_audio, write_video


def test_video_roundtrip_with_audio_and_metadata(tmp_path):
    frames = [np.full((64, 96, 3), i * 8, np.uint8) for i in range(32)]
    sr = 24000
    audio = (0.2 * np.sin(np.arange(2 * sr) / sr * 2 * np.pi * 220)).astype(np.float32)
    path = write_video(tmp_path / "v.mp4", frames, 16, audio=audio, sr=sr, metadata={"comment": "AI-generated"})
    info = probe(path)
    assert (info.width, info.height, info.fps, info.has_audio) == (96, 64, 16.0, True)
    d = stream_durations(path)
    assert d["video"] == pytest.approx(2.0, abs=1e-6) and d["audio"] == pytest.approx(2.0, abs=0.03)
    with av_open(str(path)) as c:
        assert c.metadata["comment"] == "AI-generated"
    back = read_audio(path, 16000)
    assert abs(len(back) / 16000 - 2.0) < 0.1
    part = read_audio(path, 16000, start=0.5, end=1.0)
    assert len(part) == 8000


def test_wav_roundtrip(tmp_path):
    x = np.linspace(-0.5, 0.5, 16000, dtype=np.float32)
    write_audio(tmp_path / "a.wav", x, 16000)
    y = read_audio(tmp_path / "a.wav", 16000)
    assert len(y) == 16000 and np.abs(y - x).max() < 1e-3
    assert not list(tmp_path.glob(".*part"))


@pytest.mark.parametrize("content, match", [(b"", "is empty"), (b"not a video at all" * 100, "cannot be read")])
def test_bad_files(tmp_path, content, match):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    with pytest.raises(PersonaError, match=match) as e:
        probe(bad)
    assert "bad.mp4" in str(e.value)


def test_missing_audio_track(tmp_path):
    path = write_video(tmp_path / "silent.mp4", [np.zeros((32, 32, 3), np.uint8)] * 4, 8)
    with pytest.raises(PersonaError, match="no audio track"):
        read_audio(path)


def test_opening_media_switches_ffmpeg_logging_back_off(tmp_path):
    """torchvision's import turns PyAV's Python log callback on; with x264's threads that can hang an
    encode forever, so every open switches it back off."""
    import av

    av.logging.set_level(av.logging.ERROR)  # as importing torchvision.io does
    frames = [np.zeros((32, 32, 3), np.uint8)] * 4
    path = write_video(tmp_path / "v.mp4", frames, 8, preset="ultrafast")
    assert av.logging.get_level() is None
    av.logging.set_level(av.logging.ERROR)
    assert probe(path).has_video and av.logging.get_level() is None


def test_audio_damaged_part_way_through_is_reported_with_the_time(tmp_path):
    sr = 16000
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(6 * sr) / sr)).astype(np.float32)
    path = write_audio(tmp_path / "talk.flac", tone, sr)
    assert len(read_audio(path, sr)) == pytest.approx(6 * sr, abs=sr // 50)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 2000] = bytes((b * 7 + 13) % 256 for b in data[middle:middle + 2000])
    path.write_bytes(bytes(data))
    with pytest.raises(PersonaError) as e:
        read_audio(path, sr)
    line = str(e.value)
    assert line.startswith(f"{path}: audio cannot be decoded after ") and "damaged" in line and "\n" not in line
    seconds = float(line.split("after ")[1].split(" s")[0])
    assert 0.5 < seconds < 5.5  # where the damage is, not the start or the end
