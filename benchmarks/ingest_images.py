"""How fast the image side of `persona ingest` analyses 1080p footage (captioning off).

Builds about three minutes of 1080x1920 HEVC from ../shared/media/footage by repeating each
recording's packets (a remux: the original encoding, keyframes every 8-10 s), then runs
`ingest_images` on it in a fresh workspace with a reference frame of the bearded man, and prints
seconds of footage analysed per wall-clock second, for the scan alone and for the whole ingest.

    python benchmarks/ingest_images.py [--minutes 3] [--workers 0] [--short-gop]

--short-gop also re-encodes one minute with a keyframe every second (as phones and cameras record),
which the scan decodes keyframes-only. The figures depend on what else the CPU is doing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

from persona.media import av_open

REPO = Path(__file__).resolve().parents[1]
MEDIA = Path(os.environ.get("PERSONA_SHARED_MEDIA", REPO.parent / "shared" / "media")) / "footage"


def remux_repeated(src: Path, out: Path, seconds: float) -> float:
    """Concatenate `src` with itself (packets copied, timestamps shifted) to at least `seconds`."""
    with av_open(str(src)) as probe:
        stream = probe.streams.video[0]
        length = float(stream.duration * stream.time_base)
    reps = max(1, int(np.ceil(seconds / length)))
    with av_open(str(out), "w") as dst:
        vs = None
        for r in range(reps):
            with av_open(str(src)) as inp:
                s = inp.streams.video[0]
                vs = vs or dst.add_stream_from_template(s, opaque=True)
                shift = int(round(r * length / s.time_base))
                for packet in inp.demux(s):
                    if packet.dts is None:
                        continue
                    packet.pts = (packet.pts or 0) + shift
                    packet.dts += shift
                    packet.stream = vs
                    dst.mux(packet)
    return reps * length


def reencode_short_gop(src: Path, out: Path, seconds: float) -> float:
    with av_open(str(src)) as inp, av_open(str(out), "w") as dst:
        s = inp.streams.video[0]
        s.thread_type = "AUTO"
        rate = s.average_rate
        vs = dst.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = s.codec_context.width, s.codec_context.height, "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "20", "g": str(round(float(rate)))}
        n = 0
        for frame in inp.decode(s):
            if frame.time >= seconds:
                break
            out = av.VideoFrame.from_ndarray(frame.to_ndarray(format="yuv420p"), format="yuv420p")
            out.pts, out.time_base = n, 1 / rate
            for p in vs.encode(out):
                dst.mux(p)
            n += 1
        for p in vs.encode():
            dst.mux(p)
    return n / float(s.average_rate)


def _cpu() -> float:
    """CPU seconds used by this process and every process under it, the scan's workers included
    (they are children of a fork server, which getrusage(RUSAGE_CHILDREN) never sees)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()  # children_*: workers the fork server has already reaped
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def reference_frame(out: Path) -> Path:
    with av_open(str(MEDIA / "latentsync_demo2.mp4")) as c:
        for frame in c.decode(video=0):
            if frame.time >= 18.5:
                Image.fromarray(frame.to_ndarray(format="rgb24")).save(out)
                return out
    raise RuntimeError("no frame at 18.5 s")


def run(videos: list[Path], seconds: float, reference: Path, workers: int, label: str) -> None:
    from persona.data import images
    from persona.workspace import Consent, Workspace

    with tempfile.TemporaryDirectory(prefix="persona-bench-") as tmp:
        ws = Workspace.create(Path(tmp) / "ws", "Bench Person",
                              consent=Consent(person="b", granted_by="b", date=dt.date.today(), scope="benchmark"))
        settings = images.ImageSettings(captions="token", workers=workers)
        timings: dict[str, float] = {}
        original = images.scan.run

        def timed_scan(*args, **kwargs):
            t0, c0 = time.perf_counter(), _cpu()
            original(*args, **kwargs)
            timings["scan"], timings["scan_cpu"] = time.perf_counter() - t0, _cpu() - c0

        images.scan.run = timed_scan
        t0 = time.perf_counter()
        try:
            summary = images.ingest_images(ws, videos, [], settings, faces=[reference])
        finally:
            images.scan.run = original
        total = time.perf_counter() - t0
    scan_s, cpu = timings.get("scan", float("nan")), timings.get("scan_cpu", float("nan"))
    cores = images.scan.worker_count(0)
    print(f"{label}: {seconds:.0f} s of footage in {len(videos)} file(s)")
    print(f"  scan (decode + faces + identity embeddings): {scan_s:6.1f} s = {seconds / scan_s:5.1f}x real time")
    print(f"    CPU time {cpu:.1f} s ({cpu / scan_s:.2f} cores busy on average): {seconds / cpu:.1f} s of footage per "
          f"CPU-second, {cores * seconds / cpu:.1f}x real time if all {cores} cores were free")
    print(f"  whole ingest (+ hashing, selection, full-quality re-decode, crops, files): {total:6.1f} s "
          f"= {seconds / total:5.1f}x real time; {summary['images']} images, rejected {summary['rejected']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=3.0, help="total footage to build (split over the three recordings)")
    ap.add_argument("--workers", type=int, default=0, help="scan processes (0: one per core)")
    ap.add_argument("--short-gop", action="store_true", help="also measure a 1 s keyframe interval re-encode")
    args = ap.parse_args()
    if not MEDIA.is_dir():
        raise SystemExit(f"real footage not found at {MEDIA} (set PERSONA_SHARED_MEDIA)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from persona.data.scan import worker_count

    cores = worker_count(0)
    print(f"{cores} CPU cores; load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="persona-footage-") as tmp:
        folder = Path(tmp)
        each = args.minutes * 60 / 3
        videos, seconds = [], 0.0
        for i in (1, 2, 3):
            out = folder / f"long{i}.mp4"
            seconds += remux_repeated(MEDIA / f"latentsync_demo{i}.mp4", out, each)
            videos.append(out)
        reference = reference_frame(folder / "reference.png")
        run(videos, seconds, reference, args.workers, "1080x1920 HEVC as recorded (keyframes every 8-10 s)")
        if args.short_gop:
            short = folder / "short-gop.mp4"
            secs = reencode_short_gop(videos[1], short, 60.0)
            run([short], secs, reference, args.workers, "1080x1920 H.264, a keyframe every second")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
