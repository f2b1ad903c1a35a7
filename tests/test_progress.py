"""Progress that a log file can hold: off a terminal, whole lines every few percent or seconds
(never more than one per update) that carry the counts; on a terminal, tqdm's bar."""

import io
import re

import torch
from tests.helpers import one_thread

from tunelab.config import TrainConfig
from tunelab.progress import EVERY_PERCENT, LineProgress, progress_bar
from tunelab.train.loop import fit, plan_steps
from tunelab.train.runtime import make_accelerator


class Clock:
    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_lines_every_few_percent_with_the_counts_and_the_values_of_the_step_just_done():
    out = io.StringIO()
    bar = LineProgress(600, "train", "step", file=out, clock=Clock(0.01))
    for step in range(1, 601):
        bar.update(1)
        bar.set_postfix(loss=f"{1 / step:.4f}")
    bar.close()
    lines = lines_of(out.getvalue())
    assert len(lines) == 100 / EVERY_PERCENT  # one per 5 %, the last one at 600
    assert lines[0].startswith("train 30/600 steps (5%) loss 0.0333 ") and "step/s eta " in lines[0]
    assert lines[-1].startswith("train 600/600 steps (100%) loss 0.0017 ") and " in " in lines[-1]
    counts = [int(re.match(r"train (\d+)/600 steps", line).group(1)) for line in lines]
    assert counts == sorted(set(counts))


def test_a_slow_run_prints_by_time_and_never_more_than_a_line_per_update():
    out = io.StringIO()
    bar = LineProgress(10, "train", "step", file=out, every_seconds=60, clock=Clock(90.0))  # 90 s a step
    for _ in range(10):
        bar.update(1)
    bar.close()
    lines = lines_of(out.getvalue())
    assert [line.split()[1] for line in lines] == [f"{k}/10" for k in range(1, 11)]
    assert " s/step eta " in lines[0] and lines[-1].endswith("s/step in 30m00s")


def test_write_goes_to_stdout_and_a_disabled_bar_prints_no_progress(capsys):
    out = io.StringIO()
    bar = LineProgress(4, "train", "step", disable=True, file=out)
    for _ in range(4):
        bar.update(1)
    bar.write("step 4: val_loss 0.1")
    bar.close()
    assert out.getvalue() == "" and capsys.readouterr().out == "step 4: val_loss 0.1\n"


def test_a_terminal_gets_the_tqdm_bar_and_a_file_the_line_printer():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    from tqdm.auto import tqdm

    bar = progress_bar(3, "train", "step", file=Terminal())
    assert isinstance(bar, tqdm)
    bar.close()
    assert isinstance(progress_bar(3, "train", "step", file=io.StringIO()), LineProgress)


def test_a_training_with_captured_output_logs_a_bounded_number_of_lines_with_the_steps(tmp_path, capsys):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    data = [(torch.randn(3), float(i % 2)) for i in range(16)]
    cfg = TrainConfig(max_steps=200, batch_size=4, lr=1e-2, warmup=0, device="cpu")
    accelerator, _ = make_accelerator(cfg)

    def collate(items):
        return {"x": torch.stack([x for x, _ in items]), "y": torch.tensor([y for _, y in items])}

    class Mse:
        def count(self, batch):
            return float(len(batch["x"]))

        def __call__(self, model, batch):
            return ((model(batch["x"]).squeeze(-1) - batch["y"]) ** 2).sum()

    with one_thread():
        fit(model, data, collate, Mse(), None, cfg, plan_steps(len(data), cfg), tmp_path, accelerator, log=lambda *a: None)
    err = capsys.readouterr().err
    assert "\r" not in err  # no bar rewriting itself
    lines = [line for line in lines_of(err) if line.startswith("train ")]
    assert 1 <= len(lines) <= 100 / EVERY_PERCENT + 1  # a run of a few seconds: by percent only
    assert all(re.match(r"train \d+/200 steps \(\d+%\) loss \d\.\d{4} lr ", line) for line in lines), lines
    assert lines[-1].startswith("train 200/200 steps (100%)")
