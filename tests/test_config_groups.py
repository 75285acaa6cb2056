"""Every option of every config group instantiates, at tiny scale on CPU: conf/<group>/<option>.yaml leads to a
working object, or -- where this machine cannot run it (no GPU, an optional package missing, no real weights) --
to the refusal that says why. Groups and options are listed from conf/ itself: a new option is covered without an
edit here, and a new group fails :func:`test_every_config_group_has_an_instantiation_check` until it gets one.

Also: the model groups' typed schemas (medgpt_oss/schemas.py) stop a misspelt or mistyped key at compose time.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import hydra
import pytest
import torch
from hydra.errors import ConfigCompositionException, InstantiationException
from hydra.utils import get_class
from omegaconf import OmegaConf

from medgpt_oss.config import CONF_DIR, MissingExtraError, group_options, load_option, model_config
from tests.conftest import compose_config, compose_train, small_data_overrides

TINY = ["+stage=align", "scale=tiny"]
HAS_CUDA = torch.cuda.is_available()


def config_groups() -> list[str]:
    """Every folder of conf/ that holds options (``hydra/launcher`` included), as Hydra names groups."""
    return sorted({p.parent.relative_to(CONF_DIR).as_posix() for p in CONF_DIR.rglob("*.yaml") if p.parent != CONF_DIR})


def options(group: str) -> list[str]:
    return group_options(group)


def target_class(node: Any) -> type:
    return get_class(str(node._target_))


def build_stage(cfg) -> Any:
    """The stage a composed train config names, its tiny model built (as train() builds it)."""
    from medgpt_oss.stages.base import VLMStage

    stage = hydra.utils.instantiate(cfg.stage, model=model_config(cfg), _recursive_=False, _convert_="all")
    assert isinstance(stage, VLMStage) and type(stage) is target_class(cfg.stage)
    return stage


def benchmarks_of(cfg) -> dict[str, Any]:
    """Every benchmark a composed eval config chooses, instantiated (as evaluate() does)."""
    from medgpt_oss.eval.benchmarks.base import Benchmark
    from medgpt_oss.evaluate import chosen_benchmarks

    built = {name: hydra.utils.instantiate(b, _convert_="all") for name, b in chosen_benchmarks(cfg).items()}
    for name, benchmark in built.items():
        assert isinstance(benchmark, Benchmark) and benchmark.name == name, name
    return built


# -- the model parts ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("option", options("encoder"))
def test_encoder(option, tmp_path):
    from medgpt_oss.models.encoders import VisionEncoder

    cfg = compose_train([*TINY, f"encoder={option}"], tmp_path)
    encoder = hydra.utils.instantiate(cfg.encoder)
    assert isinstance(encoder, VisionEncoder) and type(encoder) is target_class(cfg.encoder)
    size = encoder.image_size
    out = encoder(torch.randn(1, 3, size, size))
    assert out.shape == (1, encoder.num_tokens, encoder.hidden_size) and torch.isfinite(out).all()


@pytest.mark.parametrize("option", options("projector"))
def test_projector(option, tmp_path):
    from medgpt_oss.models.projectors import Projector

    cfg = compose_train([*TINY, f"projector={option}"], tmp_path)
    projector = hydra.utils.instantiate(cfg.projector)(in_dim=16, out_dim=24)
    assert isinstance(projector, Projector) and type(projector) is target_class(cfg.projector)
    out = projector(torch.randn(2, 64, 16))  # an 8 x 8 patch grid
    assert out.shape == (2, projector.output_tokens(64), 24)


@pytest.mark.parametrize("option", options("llm"))
def test_llm(option, tmp_path):
    from medgpt_oss.models.llm import LanguageModel

    cfg = compose_train([*TINY, f"llm={option}"], tmp_path)
    llm = hydra.utils.instantiate(cfg.llm)
    assert isinstance(llm, LanguageModel) and type(llm) is target_class(cfg.llm)
    ids = torch.tensor([[1, 2, llm.image_token_id]])
    assert llm.embed(ids).shape == (1, 3, llm.hidden_size)
    assert llm.lora_config is None and llm.chat.reasoning_effort == cfg.chat.reasoning_effort


@pytest.mark.parametrize("option", options("lora"))
def test_lora(option, tmp_path):
    from medgpt_oss.models.llm import LanguageModel
    from medgpt_oss.models.lora import LoraSettings
    from medgpt_oss.models.quantize import QuantizationUnavailableError

    cfg = compose_train([*TINY, f"lora={option}"], tmp_path)
    if not cfg.lora:  # lora=none: no settings, the LLM trains fully or stays frozen
        assert LoraSettings.of(cfg.lora) is None
        return
    settings = hydra.utils.instantiate(cfg.lora)
    assert isinstance(settings, LoraSettings) and settings == LoraSettings.of(OmegaConf.to_container(cfg.lora))
    assert settings.rank == cfg.lora.rank and settings.target_modules == tuple(cfg.lora.target_modules)
    if settings.quantize and not HAS_CUDA:
        with pytest.raises(InstantiationException, match="needs a CUDA GPU") as err:
            hydra.utils.instantiate(cfg.llm, lora=cfg.lora)
        assert isinstance(err.value.__cause__, QuantizationUnavailableError)
        return
    llm: LanguageModel = hydra.utils.instantiate(cfg.llm, lora=cfg.lora)
    adapters = [n for n, _ in llm.named_parameters() if llm.is_adapter_param(n)]
    assert adapters and any(m in n for n in adapters for m in settings.target_modules)
    if settings.target_parameters:
        assert any("experts" in n for n in adapters)


@pytest.mark.parametrize("option", options("chat"))
def test_chat(option, tmp_path):
    from medgpt_oss.harmony import ChatSettings

    cfg = compose_train([*TINY, f"chat={option}"], tmp_path)
    chat = ChatSettings.of(OmegaConf.to_container(cfg.chat, resolve=True))
    assert isinstance(chat, ChatSettings) and chat.reasoning_effort == cfg.chat.reasoning_effort


@pytest.mark.parametrize("option", options("stage"))
def test_stage(option, tmp_path):
    cfg = compose_train([f"+stage={option}", "scale=tiny"], tmp_path)
    stage = build_stage(cfg)
    assert stage.vlm.tokens_per_image > 0


# -- how a run trains ---------------------------------------------------------------------------------------

class _Blocks:
    """What a strategy asks of the model: the module classes it wraps and recomputes."""

    def fsdp_wrap_modules(self) -> set[type[torch.nn.Module]]:
        return {torch.nn.TransformerEncoderLayer}


# The strategy each factory of medgpt_oss/strategies.py returns (a file naming a class makes that class).
FACTORY_MAKES = {"medgpt_oss.strategies.fsdp": "medgpt_oss.strategies.TrainedOnlyFSDPStrategy",
                 "medgpt_oss.strategies.deepspeed": "lightning.pytorch.strategies.DeepSpeedStrategy"}


@pytest.mark.parametrize("option", options("strategy"))
def test_strategy(option, tmp_path):
    from lightning.pytorch import Trainer
    from lightning.pytorch.strategies import Strategy

    from medgpt_oss.train import choose_strategy, with_model_blocks

    cfg = compose_train([*TINY, f"strategy={option}"], tmp_path)
    target = cfg.strategy.get("_target_")
    if target == "medgpt_oss.strategies.deepspeed" and importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(MissingExtraError, match=r"pip install 'medgpt-oss\[deepspeed\]'"):
            choose_strategy(cfg)
        return
    chosen = choose_strategy(cfg)
    if cfg.strategy.get("sharding_strategy") == "HYBRID_SHARD" and not HAS_CUDA:
        with pytest.raises(ValueError, match="Use strategy=fsdp"):  # one device per node: nothing to shard over
            with_model_blocks(chosen, _Blocks())
        return
    strategy = with_model_blocks(chosen, _Blocks())
    if target is None:
        assert strategy == cfg.strategy.name  # Lightning's own choice, by name
    else:  # the class a file names, or the one its factory makes
        assert isinstance(strategy, Strategy)
        assert type(strategy) is get_class(FACTORY_MAKES.get(target, target))
    trainer = Trainer(accelerator="cpu", devices=1, strategy=strategy, logger=False, enable_checkpointing=False)
    assert trainer.strategy is strategy or isinstance(strategy, str)
    if cfg.strategy.get("wrap_model_blocks"):
        assert trainer.strategy.kwargs["auto_wrap_policy"]._module_classes == _Blocks().fsdp_wrap_modules()


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer(option, tmp_path):
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch import Trainer

    cfg = compose_train([*TINY, f"trainer={option}"], tmp_path)
    if cfg.trainer.accelerator in ("gpu", "cuda") and not HAS_CUDA:
        with pytest.raises(InstantiationException, match="No supported gpu backend") as err:
            hydra.utils.instantiate(cfg.trainer, logger=False)
        assert isinstance(err.value.__cause__, MisconfigurationException)
        return
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer, Trainer) and trainer.precision == cfg.trainer.precision


@pytest.mark.parametrize("option", options("debug"))
def test_debug(option, tmp_path):
    from lightning.pytorch import Trainer

    cfg = compose_train([*TINY, "trainer=cpu", f"debug={option}"], tmp_path)
    assert isinstance(hydra.utils.instantiate(cfg.trainer, logger=False), Trainer)


@pytest.mark.parametrize("group", ["logger", "callbacks"])
def test_logger_and_callbacks(group, tmp_path):
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.loggers import Logger

    kind = {"logger": Logger, "callbacks": Callback}[group]
    for option in options(group):
        cfg = compose_train([*TINY, f"{group}={option}"], tmp_path)
        entries = {name: entry for name, entry in cfg[group].items() if entry and "_target_" in entry}
        assert entries, f"{group}={option} names nothing to instantiate"
        for name, entry in entries.items():
            package = name if name in ("wandb", "mlflow") else None  # optional extras of these loggers
            if package and importlib.util.find_spec(package) is None:
                with pytest.raises(InstantiationException, match=package):
                    hydra.utils.instantiate(entry)
                continue
            built = hydra.utils.instantiate(entry)
            assert isinstance(built, kind) and type(built) is target_class(entry), (option, name)


@pytest.mark.parametrize("option", options("data"))
def test_data(option, tmp_path, medsynth_dir, tiny_tokenizer):
    from lightning.pytorch import LightningDataModule

    from tests.test_streaming import input_spec, medsynth_records, write_prepared

    overrides = [*TINY, f"data={option}", "data.batch_size=2", *small_data_overrides()]
    if option != "medsynth":  # prepared shards, as `python -m medgpt_oss.prepare` writes them
        prepared = write_prepared(tmp_path / "prepared", {
            "train": medsynth_records(medsynth_dir, "train", {"caption"}),
            "val": medsynth_records(medsynth_dir, "val", {"caption"})})
        overrides = [o for o in overrides if not o.startswith("data.synth.")]
        overrides.append(f"data.root={prepared}" if option == "prepared"
                         else f"data.sources=[{{root:'{prepared}',weight:1.0}},{{root:'{prepared}',weight:2.0}}]")
    cfg = compose_train(overrides, tmp_path, medsynth_dir)
    data = hydra.utils.instantiate(cfg.data, input_spec=input_spec(tiny_tokenizer))
    assert isinstance(data, LightningDataModule) and type(data) is target_class(cfg.data)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].shape[0] >= 1


@pytest.mark.parametrize("option", options("paths"))
def test_paths(option, tmp_path):
    cfg = compose_train([*TINY, f"paths={option}"], tmp_path)
    paths = OmegaConf.to_container(cfg.paths, resolve=True)
    assert paths and all(str(p).startswith(str(tmp_path)) for p in paths.values())


@pytest.mark.parametrize("option", options("hydra"))
def test_hydra(option, tmp_path):
    cfg = compose_train([*TINY, f"hydra={option}"], tmp_path)
    run = OmegaConf.to_container(cfg.hydra.run, resolve=True)
    assert str(run["dir"]).startswith(str(tmp_path))
    assert OmegaConf.to_container(cfg.hydra.job_logging, resolve=True)["root"]["handlers"]


@pytest.mark.parametrize("option", options("hydra/launcher"))
def test_hydra_launcher(option, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra.plugins.launcher import Launcher

    cfg = compose_train([*TINY, f"hydra/launcher={option}", "trainer.devices=2", "trainer.num_nodes=2"], tmp_path)
    launcher = hydra.utils.instantiate(cfg.hydra.launcher)  # submits nothing
    assert isinstance(launcher, Launcher)


# -- data sources and benchmarks ----------------------------------------------------------------------------

@pytest.mark.parametrize("option", options("source"))
def test_source(option, tmp_path):
    cfg = compose_config("prepare", [f"source={option}", f"source.root={tmp_path}", f"out={tmp_path / 'out'}"],
                         tmp_path)
    source = hydra.utils.instantiate(cfg.source, _convert_="all")
    assert type(source) is target_class(cfg.source) and Path(source.root) == tmp_path


@pytest.mark.parametrize("option", options("benchmark"))
def test_benchmark(option, tmp_path):
    cfg = compose_config("eval", [f"benchmark={option}"], tmp_path)
    built = benchmarks_of(cfg)
    if option in built:  # a benchmark's own file: its class, at benchmark.<option>
        assert list(built) == [option] and type(built[option]) is target_class(cfg.benchmark[option])
    else:  # a suite of benchmarks
        assert len(built) > 1


# -- experiments and recipes: every stage they train and every benchmark they evaluate --------------------

@pytest.mark.parametrize("option", options("experiment"))
def test_experiment(option, tmp_path, medsynth_dir):
    from medgpt_oss import experiment

    kind = load_option("experiment", option).get("kind")
    if kind is None:  # an overlay of conf/train.yaml
        cfg = compose_train([*TINY, f"experiment={option}"], tmp_path, medsynth_dir)
        build_stage(cfg)
        for key, spec in experiment.sweep_params(cfg).items():  # every arm of its sweep composes
            for value in experiment.sweep_values(key, spec):
                compose_train([*TINY, f"experiment={option}", f"{key}={value}"], tmp_path)
        return
    cfg = compose_config("experiment", [f"experiment={option}", f"paths.data_dir={medsynth_dir}"], tmp_path)
    arm = experiment.arms_of(experiment.sweep_params(cfg))[0] if kind == "sweep" else {}
    for stage in cfg.recipe.stages:
        overrides = experiment.stage_overrides(cfg, stage, tmp_path / stage.name, experiment.arm_overrides(arm),
                                               None)
        build_stage(compose_train(overrides, tmp_path, medsynth_dir))
    ckpt = tmp_path / "last.ckpt"
    if kind == "sweep":
        suite = OmegaConf.to_container(cfg.suite, resolve=True)
        evaluations = [(suite, suite["benchmarks"], [])]
    else:
        spec = OmegaConf.to_container(cfg.evaluate, resolve=True)
        evaluations = [(spec, [s["benchmark"]], s.get("overrides") or [])
                       for s in OmegaConf.to_container(cfg.settings, resolve=True)]
    for spec, names, extra in evaluations:
        eval_cfg = compose_config("eval", experiment.evaluation_overrides(cfg, spec, ckpt, names, extra), tmp_path)
        assert set(benchmarks_of(eval_cfg)) == set(names)


@pytest.mark.parametrize("option", options("recipe"))
def test_recipe(option, tmp_path, medsynth_dir):
    from medgpt_oss import pipeline
    from medgpt_oss.models.hub import MissingWeightsError
    from medgpt_oss.train import check_pretrained

    cfg = compose_config("pipeline", [f"recipe={option}", f"recipe.evaluate.root={medsynth_dir / 'medsynth'}"],
                         tmp_path)
    for stage in cfg.recipe.stages:
        train_cfg = compose_train(pipeline.stage_overrides(cfg, stage, tmp_path, None), tmp_path, medsynth_dir)
        if train_cfg.scale == "full":  # real weights are never built here; missing, the run is refused naming them
            try:
                check_pretrained(train_cfg)
            except MissingWeightsError as exc:
                assert "llm.pretrained" in str(exc) or "encoder.pretrained" in str(exc)
            continue
        build_stage(train_cfg)
    eval_cfg = compose_config("eval", pipeline.evaluation_overrides(cfg.recipe.evaluate, tmp_path / "last.ckpt"),
                              tmp_path)
    assert set(benchmarks_of(eval_cfg)) == {cfg.recipe.evaluate.benchmark}


def test_every_config_group_has_an_instantiation_check():
    checked = {"encoder", "projector", "llm", "lora", "chat", "stage", "strategy", "trainer", "debug", "logger",
               "callbacks", "data", "paths", "hydra", "hydra/launcher", "source", "benchmark", "experiment", "recipe"}
    assert set(config_groups()) == checked, "a conf/ group without a test above (or a test for a group that is gone)"


# -- typed schemas: a misspelt or mistyped key stops the run at compose time -----------------------------------

SCHEMA_GROUPS = ("encoder", "projector", "llm", "lora")


@pytest.mark.parametrize("group", SCHEMA_GROUPS)
def test_every_option_of_the_model_groups_extends_its_schema(group):
    for option in options(group):
        raw = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
        if not raw:  # lora=none: no settings at all
            continue
        assert any(str(d).startswith("/schema/") for d in raw.get("defaults", [])), f"{group}/{option}.yaml"


def _misspelt_copy(group: str, tmp_path: Path) -> tuple[Path, str, str]:
    """conf/ copied, with <group>/misspelt.yaml: the group's first option with one key misspelt."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    option, key = next((o, k) for o in options(group) for k in load_option(group, o) if not k.startswith("_"))
    text = (conf / group / f"{option}.yaml").read_text()
    misspelt = key[:-1] + key[-1] * 2  # e.g. feature_layerr
    (conf / group / "misspelt.yaml").write_text(text.replace(f"\n{key}:", f"\n{misspelt}:", 1))
    return conf, option, misspelt


@pytest.mark.parametrize("group", SCHEMA_GROUPS)
def test_a_misspelt_key_in_a_group_file_fails_at_compose_naming_it(group, tmp_path):
    conf, option, misspelt = _misspelt_copy(group, tmp_path)
    compose_config("train", [*TINY, f"{group}={option}"], tmp_path, conf_dir=conf)  # the copy itself composes
    with pytest.raises(ConfigCompositionException) as err:
        compose_config("train", [*TINY, f"{group}=misspelt"], tmp_path, conf_dir=conf)
    assert f"{group}.{misspelt}" in str(err.value) and f"{group}/misspelt" in str(err.value)


MISTYPED = {"encoder": ["encoder.feature_layer=last"], "projector": ["projector=mlp2x_gelu", "projector.depth=two"],
            "llm": ["llm.loss_chunk_size=many"], "lora": ["lora=r16", "lora.rank=sixteen"]}
MISSPELT = {"encoder": ["encoder.image_szie=224"], "projector": ["projector.dept=2"],
            "llm": ["llm.atn_implementation=sdpa"], "lora": ["lora=r16", "lora.rnak=8"]}


@pytest.mark.parametrize("group", SCHEMA_GROUPS)
def test_a_misspelt_or_mistyped_override_fails_at_compose_naming_it(group, tmp_path):
    for overrides in (MISSPELT[group], MISTYPED[group]):
        with pytest.raises(ConfigCompositionException) as err:
            compose_train([*TINY, *overrides], tmp_path)
        key = overrides[-1].split("=")[0]
        chain = f"{err.value} {err.value.__cause__}"
        assert key in chain, chain


def test_keys_added_with_plus_still_compose(tmp_path):
    """Hydra's append (`+key=`) adds a key no schema field declares: the ways the code and docs add settings."""
    cfg = compose_train([*TINY, "llm=qwen2", "+llm.tiny.vocab_size=5000", "+llm.tokenizer=/some/tokenizer",
                         "lora=r16", "+lora.quantize_modules=[linear]", "+callbacks.stop._target_=builtins.dict"],
                        tmp_path)
    assert cfg.llm.tiny.vocab_size == 5000 and cfg.llm.tokenizer == "/some/tokenizer"
    assert list(cfg.lora.quantize_modules) == ["linear"] and cfg.callbacks.stop._target_ == "builtins.dict"
    cfg = compose_config("eval", ["+benchmark.medsynth.limit_per_task=3"], tmp_path)
    assert cfg.benchmark.medsynth.limit_per_task == 3


def test_a_lora_config_stored_without_its_target_still_resumes(tmp_path):
    """Checkpoints written before conf/lora named its class hold the same settings without `_target_`."""
    from types import SimpleNamespace

    from medgpt_oss import provenance
    from medgpt_oss.models.lora import LoraSettings

    model = model_config(compose_train([*TINY, "lora=r16"], tmp_path))
    saved = {**model, "lora": {k: v for k, v in model["lora"].items() if k != "_target_"}}
    assert LoraSettings.of(saved["lora"]) == LoraSettings.of(model["lora"])
    stage = SimpleNamespace(hparams={"model": model})
    provenance.check({"hyper_parameters": {"model": saved}}, stage, provenance.RESUME, "old.ckpt")
    saved["lora"]["rank"] = 8  # a real difference is still one
    with pytest.raises(provenance.ModelMismatchError, match="lora"):
        provenance.check({"hyper_parameters": {"model": saved}}, stage, provenance.RESUME, "old.ckpt")


# A schema field is `| None` wherever its class takes None: `null` composes and reaches the class.
NULLABLE = {"llm.attn_implementation": [], "llm.tiny": [], "encoder.tiny": [], "lora.alpha": ["lora=r16"],
            "lora.quantize": ["lora=qlora_r16"], "lora.quantize_modules": ["lora=qlora_r16"]}


@pytest.mark.parametrize("key", sorted(NULLABLE))
def test_a_field_its_class_takes_as_none_composes_as_null(key, tmp_path):
    cfg = compose_train([*TINY, *NULLABLE[key], f"{key}=null"], tmp_path)
    assert OmegaConf.select(cfg, key) is None
    if key == "llm.attn_implementation":  # and the class takes it: transformers' default attention
        assert hydra.utils.instantiate(cfg.llm).model.config._attn_implementation in ("eager", "sdpa")
    if key == "lora.alpha":
        assert hydra.utils.instantiate(cfg.lora).alpha == 2 * cfg.lora.rank
