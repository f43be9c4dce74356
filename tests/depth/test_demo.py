from videostate.depth.demo import depth_streaming_demo


def test_depth_demo_rows():
    rows = depth_streaming_demo(frames=5, size=(28, 42), chunk=2)
    assert [r["mode"] for r in rows] == ["offline clip", "chunks of 2", "frame by frame", "teacher alone"]
    assert rows[1]["max_abs_diff"] < 1e-4 and rows[2]["max_abs_diff"] < 1e-4
    assert rows[3]["max_abs_diff"] > 1e-3  # the random temporal path changes the teacher's depth
    assert all(r["frames_per_s"] > 0 for r in rows)
