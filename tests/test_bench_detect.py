"""`python -m lib_handrefiner.bench detect`: its judging of found hands and a run over a tiny labelled set."""
from __future__ import annotations

import shutil
from pathlib import Path

from lib_handrefiner.bench import detect as bench_detect

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_judge_matches_each_label_once_and_rejects_fingertips():
    labels = [(0, 0, 100, 100), (200, 200, 300, 300)]
    assert bench_detect.judge([(10, 10, 90, 90), (210, 210, 290, 290)], labels, 2) == (2, 0)
    assert bench_detect.judge([(10, 10, 90, 90), (20, 20, 80, 80)], labels, 2) == (1, 1)  # a duplicate is false
    assert bench_detect.judge([(45, 45, 55, 55)], labels, 2) == (0, 1)   # a fingertip is not the hand
    assert bench_detect.judge([(500, 500, 600, 600)], labels, 2) == (0, 1)
    assert bench_detect.judge([(0, 0, 1, 1)] * 3, None, 2) == (2, 1)      # by counts


def test_the_dev_set_labels_parse():
    boxes = bench_detect.read_boxes(bench_detect.BOXES)
    assert sum(len(v) for v in boxes.values()) == 41 and len(boxes) == 20
    assert all(b[0] < b[2] and b[1] < b[3] for v in boxes.values() for b in v)


def test_a_run_over_a_small_set_prints_recall_per_kind_false_and_ms(tmp_path, capsys):
    for name in ("malformed_1", "malformed_3"):
        shutil.copy(EXAMPLES / f"{name}.jpg", tmp_path / f"{name}.jpg")
    (tmp_path / "manifest.tsv").write_text("file\tkind\tn_hands_visible\n"
                                           "malformed_1.jpg\tmalformed_generated\t1\n"
                                           "malformed_3.jpg\treal_photo\t2\n")
    (tmp_path / "boxes.tsv").write_text("malformed_1.jpg\t340\t140\t512\t340\n"
                                        "malformed_3.jpg\t0\t0\t10\t10\n")
    code = bench_detect.main(["--set", str(tmp_path), "--manifest", str(tmp_path / "manifest.tsv"),
                              "--boxes", str(tmp_path / "boxes.tsv"), "--passes", "palm"])
    out = capsys.readouterr().out
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    assert rows["malformed_generated"][1:6] == ["1", "1", "1", "1.00", "0"]
    assert rows["real_photo"][1:6] == ["1", "2", "0", "0.00", "1"]   # found where no label is: false
    assert rows["all"][1:6] == ["2", "3", "1", "0.33", "1"]
    assert "false detections: 1 (33.3 % of the 3 hands)" in out and "ms per image: median" in out
