"""Every run draws its training curves (curves.png) when fit ends, whatever its logger."""

from __future__ import annotations

from PIL import Image

from medgpt_oss.curves import TrainingCurves
from medgpt_oss.train import train
from tests.conftest import compose_train, small_data_overrides
from tests.test_train import TINY_RUN, logged, run


def test_a_run_draws_its_loss_validation_and_learning_rate_curves(tmp_path, medsynth_dir):
    trainer, _ = run(tmp_path, medsynth_dir, "trainer.max_steps=4", "trainer.log_every_n_steps=2",
                     "trainer.val_check_interval=2", "trainer.limit_val_batches=1")
    curves = next(c for c in trainer.callbacks if isinstance(c, TrainingCurves))
    picture = tmp_path / "curves.png"
    assert curves.path == picture and Image.open(picture).size[0] > 500
    # every step's train/loss, though the logger wrote only every 2nd (those agree), both validations
    assert [s for s, _ in curves.train] == [1, 2, 3, 4] and [s for s, _ in curves.val] == [2, 4]
    assert len({v for _, v in curves.train}) == 4
    assert [v for s, v in curves.train if s % 2 == 0] == logged(tmp_path, "train/loss")
    assert set(curves.lr) >= {"AdamW/projector"} and all(len(p) == 4 for p in curves.lr.values())


def test_micro_batches_of_one_step_are_one_point(tmp_path, medsynth_dir):
    overrides = [o for o in TINY_RUN if o != "logger=csv"] + small_data_overrides() + [
        "~logger", "~callbacks.lr_monitor", "trainer.max_steps=2", "trainer.accumulate_grad_batches=2",
        "trainer.limit_val_batches=0"]
    trainer, _ = train(compose_train(overrides, tmp_path, medsynth_dir))
    curves = next(c for c in trainer.callbacks if isinstance(c, TrainingCurves))
    assert [s for s, _ in curves.train] == [1, 2]  # no logger at all, still drawn
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_the_curves_survive_a_resume(tmp_path):
    first = TrainingCurves(str(tmp_path / "curves.png"))
    first.train, first.val, first.lr = [(1, 2.0), (2, 1.5)], [(2, 1.7)], {"AdamW/llm": [(1, 1e-4), (2, 2e-4)]}
    resumed = TrainingCurves(str(tmp_path / "curves.png"))
    resumed.load_state_dict(first.state_dict())
    assert (resumed.train, resumed.val, resumed.lr) == (first.train, first.val, first.lr)
    assert resumed.draw() == tmp_path / "curves.png" and (tmp_path / "curves.png").stat().st_size > 0
