from videostate.demo import format_table, ssm_streaming_demo


def test_ssm_demo_modes_agree_with_offline():
    rows = ssm_streaming_demo(length=40, dim=16, layers=2, chunk=7, batch=1)
    assert [r["mode"] for r in rows] == ["offline", "chunks of 7", "step by step"]
    assert all(r["tokens_per_s"] > 0 for r in rows)
    assert all(r["max_abs_diff"] < 1e-4 for r in rows)
    table = format_table("title", rows)
    assert "chunks of 7" in table and "max |diff| vs offline" in table
