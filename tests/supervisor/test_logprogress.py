"""Step progress read from jobs' logs: each framework's lines, and bounded following of the
file (partial lines, rotation, truncation, a 200 MB file, a missing one).

The lines are what each framework's own format strings print (see the module docstring of
``supervisor/detectors/logprogress/parsers.py`` for where each comes from)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from trainwarden.supervisor.api.contract import RunSpecIn
from trainwarden.supervisor.detectors.logprogress.follow import (
    MAX_READ,
    START_TAIL,
    LogFollower,
    LogTail,
)
from trainwarden.supervisor.detectors.logprogress.parsers import (
    AutoParser,
    LogStep,
    check_progress,
    make_parser,
    strip_ansi,
)
from trainwarden.supervisor.errors import ConfigError
from trainwarden.supervisor.model.cluster import RunSpec
from trainwarden.supervisor.scheduler.slurm_parse import parse_record, stdout_path

# megatron/training/training.py training_log: ' iteration {:8d}/{:8d} |' and friends
MEGATRON = (
    " [2025-03-14 10:21:33] iteration      100/  500000 | consumed samples:        51200 |"
    " elapsed time per iteration (ms): 2304.5 | throughput per GPU (TFLOP/s/GPU): 410.2 |"
    " learning rate: 1.500000E-04 | global batch size:   512 | lm loss: 2.301445E+00 |"
    " loss scale: 1.0 | grad norm: 0.412 | number of skipped iterations:   0 |"
    " number of nan iterations:   0 |"
)
# torchtitan MetricsProcessor.log, Color codes \033[31m.. \033[39m, the [titan] log format
TITAN = (
    "[titan] 2025-03-14 10:21:33,120 - root - INFO - \x1b[31mstep:  1  \x1b[32mloss: 12.2345  "
    "\x1b[33mmemory: 20.14GiB(25.43%)  \x1b[34mtps: 1,234  \x1b[36mtflops: 56.78  "
    "\x1b[35mmfu: 5.74%\x1b[39m"
)
TITAN_TIMED = (
    "[titan] 2025-03-14 10:22:10,002 - root - INFO - \x1b[31mstep: 20  \x1b[32mloss:  7.1234  "
    "\x1b[38;2;255;165;0mstep_time:  1.2500  \x1b[34mtps: 9,876  \x1b[39m"
)
# transformers ProgressCallback: tqdm(total=max_steps), no description; its log dicts
HF_BAR = " 10%|█         | 50/500 [00:25<03:45,  2.00it/s]"
HF_SLOW = " 11%|█         | 55/500 [00:36<04:10,  1.50s/it]"
HF_EVAL = " 50%|█████     | 5/10 [00:01<00:01,  4.50it/s]"
HF_DICT = "{'loss': 2.3012, 'grad_norm': 1.23, 'learning_rate': 4.5e-05, 'epoch': 0.1}"
# lightning TQDMProgressBar ("Epoch {current_epoch}", rate_noinv_fmt) and RichProgressBar
LIGHTNING = "Epoch 2:  10%|█         | 10/100 [00:02<00:18,  4.50it/s, v_num=0, train_loss=1.23]"
LIGHTNING_RICH = "Epoch 1/9  ━━━━━━━━━━━━━━━━━━━━━━━━ 45/100 0:00:10 • 0:00:12 4.50it/s v_num: 0"
LIGHTNING_VAL = "Validation DataLoader 0:  50%|█████     | 5/10 [00:00<00:00, 20.00it/s]"


def parse(name: str, line: str) -> LogStep | None:
    return make_parser(name).parse(strip_ansi(line))


def test_megatron_reads_the_iteration_and_its_time() -> None:
    assert parse("megatron", MEGATRON) == LogStep(100, pytest.approx(2.3045))
    assert parse("megatron", "building GPT model ...") is None
    assert parse("megatron", " > loading checkpoint from /ck at iteration 100") is None


def test_torchtitan_reads_the_step_through_colour_codes() -> None:
    assert parse("torchtitan", TITAN) == LogStep(1, None)
    assert parse("torchtitan", TITAN_TIMED) == LogStep(20, 1.25)
    assert make_parser("torchtitan").parse(TITAN) is None  # the colour codes are in the way
    assert parse("torchtitan", "[titan] ... - Training starts at step 1.") is None


def test_hf_reads_the_training_bar_and_ignores_evaluation_bars_and_dicts() -> None:
    p = make_parser("hf")
    assert p.parse(HF_BAR) == LogStep(50, 0.5)
    assert p.parse(HF_SLOW) == LogStep(55, 1.5)
    assert p.parse(HF_EVAL) is None  # a smaller total: an evaluation bar
    assert p.parse(HF_DICT) is None  # no step number in it
    assert p.parse("Map: 100%|██████████| 1000/1000 [00:00<00:00, 9000.00 examples/s]") is None


def test_lightning_counts_batches_across_epochs() -> None:
    assert parse("lightning", LIGHTNING) == LogStep(210, pytest.approx(1 / 4.5))
    assert parse("lightning", LIGHTNING_RICH) == LogStep(145, pytest.approx(1 / 4.5))
    assert parse("lightning", LIGHTNING_VAL) is None
    p = make_parser("lightning")  # an unknown total: earlier epochs' batches add up
    assert p.parse("Epoch 0: | 40/? [00:10<?, 4.00it/s]") == LogStep(40, 0.25)
    assert p.parse("Epoch 1: | 5/? [00:11<?, 4.00it/s]") == LogStep(45, 0.25)


def test_a_user_regex_names_the_step_and_maybe_its_time() -> None:
    p = make_parser(r"regex:it=(?P<step>\d+) dt=(?P<step_s>[0-9.]+)s")
    assert p.parse("[rank0] it=42 dt=0.75s loss=1.0") == LogStep(42, 0.75)
    assert make_parser(r"regex:^step (?P<step>\d+)").parse("step 7 done") == LogStep(7, None)


def test_auto_detects_the_framework_from_its_first_step_line() -> None:
    auto = AutoParser()
    assert auto.parse("Loading model...") is None and auto.chosen is None
    assert auto.parse(strip_ansi(TITAN)) == LogStep(1, None)
    assert auto.chosen is not None and auto.chosen.name == "torchtitan"
    assert "step:  1" in auto.evidence
    assert auto.parse(MEGATRON) is None  # chosen: only torchtitan's lines count now
    for line, name in ((MEGATRON, "megatron"), (HF_BAR, "hf"), (LIGHTNING, "lightning")):
        a = AutoParser()
        a.parse(line)
        assert a.chosen is not None and a.chosen.name == name


def test_progress_values_are_checked_with_a_clear_sentence() -> None:
    for ok in ("auto", "reporter", "megatron", "torchtitan", "hf", "lightning"):
        assert check_progress(ok) == ok
    with pytest.raises(ValueError, match="'deepspeed' is not one of auto, reporter"):
        check_progress("deepspeed")
    with pytest.raises(ValueError, match="does not compile"):
        check_progress("regex:(?P<step>\\d+")
    with pytest.raises(ValueError, match="no named group 'step'"):
        check_progress(r"regex:iteration (\d+)")
    spec = {"name": "r", "scheduler": "local", "command": ["x"], "nodes": 1}
    assert RunSpecIn(**spec, checkpoint_dir="/ck", progress="hf").progress == "hf"
    with pytest.raises(ValidationError, match="no named group 'step'"):
        RunSpecIn(**spec, checkpoint_dir="/ck", progress="regex:x")
    d = RunSpec(("x",), 1, "/ck", progress="regex:s=(?P<step>\\d+)").to_dict()
    assert RunSpec.from_dict(d).progress == "regex:s=(?P<step>\\d+)"
    assert RunSpec.from_dict({**d, "progress": None}).progress == "reporter"  # older rows
    with pytest.raises(ConfigError, match="progress 'x' is not one of"):
        RunSpec.from_dict({**d, "progress": "x"})


# --- following the file ------------------------------------------------------------------------


def append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(text)


def test_a_partial_last_line_waits_for_its_end_and_carriage_returns_end_lines(
    tmp_path: Path,
) -> None:
    log = tmp_path / "job.log"
    log.write_text("")
    tail = LogTail(str(log))
    append(log, "first\nsec")
    assert tail.read().lines == ["first"]
    append(log, "ond\n" + HF_BAR + "\r" + HF_SLOW + "\r")
    assert tail.read().lines == ["second", HF_BAR, HF_SLOW]
    assert tail.read().lines == []


def test_rotation_and_truncation_start_the_file_again(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_text("a\nb\n")
    tail = LogTail(str(log))
    assert tail.read().lines == ["a", "b"]
    os.rename(log, tmp_path / "job.log.1")  # logrotate: a new file at the path
    log.write_text("c1\nc2\n")
    got = tail.read()
    assert got.lines == ["c1", "c2"] and "rotated" in got.notes[0]
    log.write_text("")  # truncated in place (same inode)
    append(log, "d\n")
    got = tail.read()
    assert got.lines == ["d"] and "truncated" in got.notes[0]


def test_a_missing_file_is_a_problem_held_and_reported_once(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    follower = LogFollower(LogTail(str(log)), "megatron")
    first = follower.poll(1.0)
    assert first.problem is not None and "No such file" in first.problem
    assert follower.poll(2.0).problem is None  # held, not said again
    assert follower.problem is not None
    log.write_text(MEGATRON + "\n")
    back = follower.poll(3.0)
    assert back.recovered and [s.step for s in back.samples] == [100]
    assert follower.problem is None


def test_a_200_mb_log_is_read_in_bounded_chunks(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    with log.open("wb") as f:
        f.truncate(200 * 1024 * 1024)  # sparse: 200 MB of holes, then the newest lines
    append(log, "\n" + MEGATRON.replace("100/", "777/") + "\n")
    size = log.stat().st_size
    # a new follower starts near the end: the newest step at once, 64 KiB read
    follower = LogFollower(LogTail(str(log)), "megatron")
    got = follower.poll(1.0)
    assert [s.step for s in got.samples] == [777]
    assert got.bytes_read <= START_TAIL and follower.tail.bytes_read <= START_TAIL
    # from a saved offset far behind, it skips ahead rather than read 200 MB
    tail = LogTail(str(log), offset=0)
    got_tail = tail.read()
    assert got_tail.bytes_read <= MAX_READ and "skipped" in got_tail.notes[0]
    assert any("777/" in line for line in got_tail.lines)
    assert tail.bytes_read <= MAX_READ and tail.offset == size
    # and never more than max_read a poll when it is a little behind
    small = LogTail(str(log), offset=size - 3 * 4096, max_read=4096, max_behind=1 << 20)
    reads = [small.read().bytes_read for _ in range(4)]
    assert reads == [4096, 4096, 4096, 0]


def test_the_follower_states_the_time_between_its_step_lines(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    line = (
        " iteration {:8d}/{:8d} | consumed samples: {:12d} | elapsed time per iteration (ms): {} |"
    )
    log.write_text(line.format(10, 1000, 80, 500.0) + "\n")
    f = LogFollower(LogTail(str(log)), "megatron")
    assert [(s.step, s.step_s) for s in f.poll(100.0).samples] == [(10, 0.0)]
    append(log, line.format(20, 1000, 160, 500.0) + "\n" + line.format(20, 1000, 160, 500.0))
    # logged every 10 iterations of 0.5 s: 5 s between lines, as the hang detector must count
    assert [(s.step, s.step_s) for s in f.poll(105.0).samples] == [(20, 5.0)]
    g = LogFollower(LogTail(str(log)), r"regex:consumed samples:\s+(?P<step>\d+)")
    g.poll(100.0)
    append(log, "\n" + line.format(30, 1000, 240, 500.0) + "\n")
    assert [(s.step, s.step_s) for s in g.poll(107.5).samples] == [(240, 7.5)]  # wall time


def test_slurm_stdout_paths_are_filled_in() -> None:
    rec = parse_record(
        "JobId=4242 JobName=train UserId=alice(1000) JobState=RUNNING NodeList=nid[001-002] "
        "WorkDir=/scratch/alice/run StdOut=/scratch/alice/logs/%x-%j.out"
    )
    assert stdout_path(rec) == "/scratch/alice/logs/train-4242.out"
    assert stdout_path({**rec, "StdOut": "slurm-%8j-%N.out"}) == (
        "/scratch/alice/run/slurm-00004242-nid001.out"
    )
    assert stdout_path({**rec, "StdOut": "/l/%j-%t.out"}) is None  # one file per task
    assert stdout_path({**rec, "StdOut": "(null)"}) is None
    assert stdout_path({**rec, "StdOut": "/l/100%%.out"}) == "/l/100%.out"
