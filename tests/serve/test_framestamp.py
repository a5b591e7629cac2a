import io

import av
import numpy as np

from personalive_cli.serve.framestamp import STRIP, add_strip, read_strip


def test_ids_read_back_and_the_picture_is_untouched():
    picture = np.random.default_rng(0).integers(0, 255, (64, 96, 3), np.uint8)
    for frame_id in (0, 1, 77, 4095):
        stamped = add_strip(picture, frame_id)
        assert stamped.shape == (64 + STRIP, 96, 3)
        back, got = read_strip(stamped)
        assert got == frame_id and np.array_equal(back, picture)


def test_a_blank_strip_reads_as_no_id():
    assert read_strip(np.zeros((64 + STRIP, 96, 3), np.uint8))[1] is None


def test_ids_survive_lossy_vp8_coding():
    """What WebRTC does to the strip: VP8 at a low bitrate."""
    rng = np.random.default_rng(1)
    ids = [3, 1000, 2047, 4000]
    frames = [add_strip(rng.integers(0, 255, (128, 128, 3), np.uint8), i) for i in ids]
    buf = io.BytesIO()
    with av.open(buf, "w", format="webm") as c:
        s = c.add_stream("libvpx", rate=25)
        s.width, s.height, s.pix_fmt, s.bit_rate = 128, 128 + STRIP, "yuv420p", 150_000
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode(None))
    buf.seek(0)
    with av.open(buf) as c:
        got = [read_strip(f.to_ndarray(format="rgb24"))[1] for f in c.decode(video=0)]
    assert got == ids
