"""Loading the generation components from local paths: diffusers folder, single-file checkpoint
(original LDM layout, converted by diffusers' own `from_single_file`), ControlNet variants, errors."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from higfa.backends.ldm_export import save_single_file  # noqa: E402
from higfa.backends.components import load_components, load_controlnet, make_scheduler  # noqa: E402
from higfa.testing.pipeline_folder import save_tiny_pipeline, tiny_components  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def single_file(model_dir, tmp_path_factory):
    c = load_components(model_dir)
    return save_single_file(tmp_path_factory.mktemp("single") / "tiny-sd.safetensors", c.unet, c.vae, c.text_encoder,
                            c.controlnet)


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_diffusers_folder_loads_every_component(model_dir):
    from diffusers import ControlNetModel, DDIMScheduler

    c = load_components(model_dir)
    fresh = tiny_components()
    for name in ("unet", "controlnet", "vae", "text_encoder"):
        assert same_weights(getattr(c, name), fresh[name]), name
    assert isinstance(c.scheduler, DDIMScheduler) and isinstance(c.controlnet, ControlNetModel)
    assert c.default_size == 64 and c.vae_scale == 8 and c.latent_channels == 4
    emb = c.encode_prompts(["a photo of a Red Cardinal, a type of bird", "a photo of a House Sparrow"])
    assert emb.shape == (2, 77, 32) and not torch.equal(emb[0], emb[1])
    assert c.source["model"] == str(model_dir.resolve())


def test_single_file_in_ldm_layout_loads_the_same_weights(model_dir, single_file):
    from safetensors import safe_open

    with safe_open(str(single_file), "pt") as f:
        keys = set(f.keys())
    # the original layout, as ComfyUI / A1111 checkpoints have it
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "model.diffusion_model.middle_block.1.proj_in.weight" in keys
    assert "first_stage_model.decoder.up.0.block.0.norm1.weight" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in keys
    assert not any(k.startswith(("unet.", "vae.", "down_blocks")) for k in keys)

    folder = load_components(model_dir)
    cn_file = single_file.with_suffix(".controlnet.safetensors")
    one = load_components(single_file, config=model_dir, controlnet=cn_file)
    for name in ("unet", "vae", "text_encoder", "controlnet"):
        assert same_weights(getattr(one, name), getattr(folder, name)), name
    assert one.source["config"] == str(model_dir.resolve())
    assert torch.equal(one.encode_prompts(["a bird"]), folder.encode_prompts(["a bird"]))


def test_single_file_controlnet_with_its_config_folder(model_dir, single_file):
    cn = load_controlnet(single_file.with_suffix(".controlnet.safetensors"), config=model_dir / "controlnet")
    assert same_weights(cn, load_components(model_dir).controlnet)


def test_scheduler_by_short_name_or_class_and_options(model_dir):
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    c = load_components(model_dir, scheduler="euler")
    assert isinstance(c.scheduler, EulerDiscreteScheduler)
    assert c.scheduler.config.beta_schedule == "scaled_linear"  # the model's noise table is kept
    s = make_scheduler(c.scheduler.config, "DPMSolverMultistepScheduler")
    assert isinstance(s, DPMSolverMultistepScheduler)
    assert make_scheduler(c.scheduler.config, "ddim", {"set_alpha_to_one": True}).config.set_alpha_to_one is True
    with pytest.raises(ValueError, match="choose one of"):
        make_scheduler(c.scheduler.config, "not-a-scheduler")


def test_missing_model_path_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model not found: .*nowhere.*diffusers folder.*--config"):
        load_components(tmp_path / "nowhere")


def test_folder_without_a_component_names_it(model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken, ignore=shutil.ignore_patterns("vae"))
    with pytest.raises(FileNotFoundError, match=r"'vae'.*broken/vae"):
        load_components(broken)
    (broken / "model_index.json").unlink()
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_components(broken)


def test_single_file_without_config_explains_the_offline_config(single_file, tmp_path):
    with pytest.raises(ValueError, match=r"--config DIR.*Nothing is fetched"):
        load_components(single_file)
    with pytest.raises(FileNotFoundError, match="config folder"):
        load_components(single_file, config=tmp_path / "no-config")


def test_controlnet_errors(model_dir, tmp_path):
    import shutil

    with pytest.raises(FileNotFoundError, match=r"ControlNet not found: .*missing-cn"):
        load_components(model_dir, controlnet=tmp_path / "missing-cn")
    plain = tmp_path / "no-cn"
    shutil.copytree(model_dir, plain, ignore=shutil.ignore_patterns("controlnet"))
    with pytest.raises(FileNotFoundError, match=r"no ControlNet.*--controlnet PATH.*--preset cfg"):
        load_components(plain)
    assert load_components(plain, need_controlnet=False).controlnet is None


def test_not_a_model_file(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    with pytest.raises(ValueError, match="neither a folder nor a checkpoint"):
        load_components(f)


def test_builtin_resolves_to_the_world_folder_and_says_how_to_make_it(model_dir, tmp_path, monkeypatch):
    """The jobs turn the CLI word 'builtin' into the world's folder once; the loader takes that path."""
    import higfa.world.birds as world
    from higfa.jobs.model_path import model_path

    monkeypatch.setattr(world, "model_path", lambda: tmp_path / "untrained")
    with pytest.raises(FileNotFoundError, match=r"untrained.*python -m higfa.world.train"):
        model_path("builtin")
    monkeypatch.setattr(world, "model_path", lambda: model_dir)
    assert model_path("builtin") == model_dir
    assert load_components(model_path("builtin")).source["model"] == str(model_dir.resolve())
    assert model_path(tmp_path / "x") == tmp_path / "x"


def test_the_built_in_world_holds_its_models_in_one_components():
    """One holder of loaded models: the world's WorldModels keeps its generation parts in a Components (the
    type every backend path loads), and its prompt encoder is that Components' one."""
    from higfa.backends.components import Components
    from higfa.world.models import load_world

    m = load_world()
    c = m.components
    assert isinstance(c, Components) and type(c.scheduler).__name__ == "DDIMScheduler"
    assert (m.unet, m.controlnet, m.vae, m.text_encoder, m.tokenizer) == (c.unet, c.controlnet, c.vae,
                                                                          c.text_encoder, c.tokenizer)
    assert torch.equal(m.encode_prompts(["a photo of a finch"]), c.encode_prompts(["a photo of a finch"]))
