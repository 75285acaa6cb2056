"""Every run draws its training curves (curves.png) when fit ends, whatever its logger."""

from __future__ import annotations

from PIL import Image

from medgpt_oss.curves import TrainingCurves
from tests.test_train import logged, run


def test_a_run_draws_its_loss_validation_and_learning_rate_curves(tmp_path, medsynth_dir):
    trainer, _ = run(tmp_path, medsynth_dir, "trainer.max_steps=4", "trainer.log_every_n_steps=1",
                     "trainer.val_check_interval=2", "trainer.limit_val_batches=1")
    curves = next(c for c in trainer.callbacks if isinstance(c, TrainingCurves))
    picture = tmp_path / "curves.png"
    assert curves.path == picture and Image.open(picture).size[0] > 500
    # what it drew is what the run logged: every step's train/loss, both validations, each group's lr
    assert [v for _, v in curves.train] == logged(tmp_path, "train/loss")
    assert [s for s, _ in curves.train] == [1, 2, 3, 4] and [s for s, _ in curves.val] == [2, 4]
    assert set(curves.lr) >= {"AdamW/projector"} and all(len(p) == 4 for p in curves.lr.values())


def test_the_curves_survive_a_resume(tmp_path):
    first = TrainingCurves(str(tmp_path / "curves.png"))
    first.train, first.val, first.lr = [(1, 2.0), (2, 1.5)], [(2, 1.7)], {"AdamW/llm": [(1, 1e-4), (2, 2e-4)]}
    resumed = TrainingCurves(str(tmp_path / "curves.png"))
    resumed.load_state_dict(first.state_dict())
    assert (resumed.train, resumed.val, resumed.lr) == (first.train, first.val, first.lr)
    assert resumed.draw() == tmp_path / "curves.png" and (tmp_path / "curves.png").stat().st_size > 0
