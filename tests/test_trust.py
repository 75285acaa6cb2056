"""A checkpoint or export folder from elsewhere is data: crafted files for every route that could run code
are refused, and a marker file proves nothing ran."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from medgpt_oss.stages.align import AlignStage
from medgpt_oss.stages.base import load_stage
from medgpt_oss.train import train
from medgpt_oss.trust import UntrustedCodeError, check_targets
from tests.conftest import compose_train, small_data_overrides
from tests.test_train import TINY_RUN


@pytest.fixture(scope="module")
def real_ckpt(tmp_path_factory, medsynth_dir) -> Path:
    tmp = tmp_path_factory.mktemp("real")
    cfg = compose_train(TINY_RUN + small_data_overrides() + ["trainer.limit_val_batches=0", "trainer.max_steps=1"],
                        tmp, medsynth_dir)
    train(cfg)
    return tmp / "checkpoints" / "last.ckpt"


def marker_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('ran')"


def crafted(real_ckpt: Path, out: Path, edit) -> Path:
    checkpoint = torch.load(real_ckpt, weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, out)
    return out


@pytest.fixture()
def evil_module(tmp_path, monkeypatch):
    """A module whose import alone writes the marker (what naming a class of it would run)."""
    marker = tmp_path / "imported"
    (tmp_path / "evil_mod.py").write_text(f"{marker_code(marker)}\nclass Stage:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    sys.modules.pop("evil_mod", None)


def test_a_target_outside_the_project_in_hyper_parameters_is_refused(real_ckpt, tmp_path):
    marker = tmp_path / "ran"

    def edit(ckpt):
        ckpt["hyper_parameters"]["model"]["encoder"] = {"_target_": "builtins.exec", "_args_": [marker_code(marker)]}

    path = crafted(real_ckpt, tmp_path / "target.ckpt", edit)
    for load in (lambda: load_stage(str(path)), lambda: AlignStage.load_from_checkpoint(path)):
        with pytest.raises(UntrustedCodeError, match=r"model\.encoder\._target_ = 'builtins\.exec'"):
            load()
    assert not marker.exists()
    # A function of the project is refused too: files choose classes to build, never calls.
    path = crafted(real_ckpt, tmp_path / "fn.ckpt", lambda c: c["hyper_parameters"]["model"]["llm"].update(
        _target_="medgpt_oss.stages.base.load_stage"))
    with pytest.raises(UntrustedCodeError, match="is not a class"):
        load_stage(str(path))


@pytest.mark.parametrize("edit, message", [
    # Lightning also merges two past hyper-parameter keys into the constructor's arguments
    (lambda c: c.update(hparams={"model": {"encoder": {"_target_": "builtins.exec"}}}),
     r"checkpoint hparams\.model\.encoder\._target_ = 'builtins\.exec'"),
    (lambda c: c.update(module_arguments={"model": {"llm": {"_target_": "os.system"}}}), "module_arguments"),
    # a class one of our modules merely imports is not ours
    (lambda c: c["hyper_parameters"]["model"]["llm"].update(_target_="medgpt_oss.models.llm.AutoModelForCausalLM"),
     "not a class of medgpt_oss"),
    # our own class, but not the part the key builds
    (lambda c: c["hyper_parameters"]["model"]["encoder"].update(_target_="medgpt_oss.prepare.Preparer"),
     "is not a VisionEncoder"),
    # the LoRA settings are built from the checkpoint too (conf/lora/ names LoraSettings)
    (lambda c: c["hyper_parameters"]["model"].update(lora={"_target_": "medgpt_oss.prepare.Preparer", "rank": 4}),
     r"model\.lora\._target_ = 'medgpt_oss\.prepare\.Preparer' is not a LoraSettings"),
])
def test_every_key_lightning_reads_is_checked(real_ckpt, tmp_path, edit, message):
    path = crafted(real_ckpt, tmp_path / "legacy.ckpt", edit)
    with pytest.raises(UntrustedCodeError, match=message):
        load_stage(str(path))
    with pytest.raises(UntrustedCodeError, match=message):
        AlignStage.load_from_checkpoint(path)


def test_a_stage_class_outside_the_project_is_refused_before_its_module_is_imported(real_ckpt, tmp_path,
                                                                                     evil_module):
    path = crafted(real_ckpt, tmp_path / "stage.ckpt", lambda c: c.update(stage_class="evil_mod.Stage"))
    with pytest.raises(UntrustedCodeError, match="stage_class = 'evil_mod.Stage' is not a class of medgpt_oss"):
        load_stage(str(path))
    assert not evil_module.exists() and "evil_mod" not in sys.modules
    path = crafted(real_ckpt, tmp_path / "notstage.ckpt",
                   lambda c: c.update(stage_class="medgpt_oss.models.vlm.MedVLM"))
    with pytest.raises(UntrustedCodeError, match="not a VLMStage"):
        load_stage(str(path))


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (marker_code(self.marker),)


def test_a_pickle_payload_is_refused_on_every_route(real_ckpt, tmp_path, medsynth_dir):
    marker = tmp_path / "unpickled"
    checkpoint = torch.load(real_ckpt, weights_only=True)
    checkpoint["extra"] = Payload(marker)
    path = tmp_path / "payload.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(UntrustedCodeError, match="refused"):
        load_stage(str(path))
    with pytest.raises(UntrustedCodeError, match="refused"):
        AlignStage.load_from_checkpoint(path)
    # Resume goes through Lightning's loader, told weights_only=True.
    cfg = compose_train(TINY_RUN + small_data_overrides() + ["trainer.limit_val_batches=0", "trainer.max_steps=2",
                                                             f"ckpt_path={path}"], tmp_path / "resume", medsynth_dir)
    with pytest.raises(UntrustedCodeError, match="payload.ckpt' holds pickled objects"):
        train(cfg)
    # init_from reads the previous stage's checkpoint the same way
    cfg = compose_train(TINY_RUN + small_data_overrides() + ["trainer.limit_val_batches=0", "trainer.max_steps=1",
                                                             f"init_from={path}"], tmp_path / "handoff", medsynth_dir)
    with pytest.raises(UntrustedCodeError, match="refused"):
        train(cfg)
    assert not marker.exists()


def test_an_export_naming_a_class_outside_the_project_is_refused(tmp_path, evil_module, real_ckpt):
    from medgpt_oss.export import export
    from medgpt_oss.models.load_export import medvlm_from_export

    out = export(real_ckpt, tmp_path / "export", format="medgpt_oss")
    config = json.loads((out / "config.json").read_text())
    config["projector"]["class"] = "evil_mod.Stage"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(UntrustedCodeError, match="projector.class = 'evil_mod.Stage'"):
        medvlm_from_export(out)
    assert not evil_module.exists()


def test_the_user_can_trust_a_class_by_name():
    config = {"model": {"encoder": {"_target_": "torch.nn.Identity"}, "layers": [{"_target_": "torch.nn.ReLU"}]}}
    with pytest.raises(UntrustedCodeError, match=r"hp\.model\.encoder\._target_"):
        check_targets(config, "hp")
    with pytest.raises(UntrustedCodeError, match=r"hp\.model\.layers\[0\]\._target_"):
        check_targets(config, "hp", trusted=["torch.nn.Identity"])
    check_targets(config, "hp", trusted=["torch.nn.Identity", "torch.nn.ReLU"])


def test_the_evaluate_cli_reports_a_refused_checkpoint_without_a_traceback(real_ckpt, tmp_path):
    import subprocess

    path = crafted(real_ckpt, tmp_path / "target.ckpt", lambda c: c["hyper_parameters"]["model"]["encoder"].update(
        _target_="os.system"))
    result = subprocess.run([sys.executable, "-m", "medgpt_oss.evaluate", f"ckpt={path}", "limit=1",
                             f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "os.system" in result.stderr and "not a class of medgpt_oss" in result.stderr
    assert "Traceback" not in result.stderr
