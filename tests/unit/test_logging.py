import json

from calmrl.logging import JsonlWriter


def test_resume_drops_records_past_the_checkpoint_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"iter": i, "x": i}) + "\n" for i in range(1, 6)) + '{"iter": 6, "x"')
    w = JsonlWriter(path, resume_step=3)
    w.write({"iter": 4, "x": 40})
    w.close()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"iter": 1, "x": 1},
        {"iter": 2, "x": 2},
        {"iter": 3, "x": 3},
        {"iter": 4, "x": 40},
    ]


def test_fresh_run_starts_a_new_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iter": 1}\n')
    JsonlWriter(path, resume_step=None).close()
    assert path.read_text() == ""
