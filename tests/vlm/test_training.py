import json

import pytest
import torch

from videostate.training import Trainer
from videostate.training.recipe import get_task, load_recipe
from videostate.vlm.training import (
    VLM2ModelConfig,
    add_lora,
    build_model,
    collate_conversations,
    conversation_messages,
)

from .tiny import GEOM_DIM, VISION_DIM, char_tokenizer, tiny_base, tiny_vlm2_config, video_batch


def _write_run(tmp_path, frames=5):
    from videostate.data.video import VideoWriter

    base = tiny_base("onevision")
    base.save_pretrained(tmp_path / "base")
    char_tokenizer().save_pretrained(tmp_path / "base")
    (tmp_path / "videos").mkdir()
    (tmp_path / "spatial").mkdir()
    samples = []
    for i in range(2):
        with VideoWriter(tmp_path / "videos" / f"scene{i}.mp4", fps=5) as writer:
            for f in range(frames):
                writer.write(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(10 * i + f)))
        torch.save(
            {
                "camera_tokens": torch.randn(frames, 1, GEOM_DIM),
                "patch_tokens": torch.randn(frames, 16, GEOM_DIM),
                "pts3d": torch.randn(frames, 8, 8, 3),
            },
            tmp_path / "spatial" / f"scene{i}.pt",
        )
        samples.append(
            {
                "id": str(i),
                "video": f"scene{i}.mp4",
                "conversations": [
                    {"from": "human", "value": "<image>\nHow many chairs?"},
                    {"from": "gpt", "value": str(i)},
                ],
            }
        )
    (tmp_path / "data.json").write_text(json.dumps(samples))
    return base


def test_recipe_trains_exactly_the_memory_and_fusion(tmp_path):
    base = _write_run(tmp_path)
    vlm2 = {k: v for k, v in vars(tiny_vlm2_config(mm_tunable_parts="dual_memory,fusion_block")).items()}
    recipe = load_recipe(
        {
            "task": "videostate.vlm.training:TASK",
            "trainer": {
                "max_steps": 2,
                "batch_size": 2,
                "device": "cpu",
                "progress": False,
                "clip_grad_norm": None,
                "output_dir": str(tmp_path / "run"),
            },
            "optim": {"lr": 1e-2, "warmup_steps": 0},
            "model": {"base": str(tmp_path / "base"), "vlm2": vlm2},
            "data": {
                "data_path": str(tmp_path / "data.json"),
                "video_folder": str(tmp_path / "videos"),
                "spatial_folder": str(tmp_path / "spatial"),
                "num_frames": 3,
            },
        }
    )
    setup = get_task(recipe.task).build(recipe.model, recipe.data)
    initial = {n: p.detach().clone() for n, p in setup.model.named_parameters()}
    trainer = Trainer(
        setup.model, setup.train_step, setup.dataset, recipe.trainer, recipe.optim, collate_fn=setup.collate_fn
    )
    model = trainer.fit()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, initial[n])}
    assert changed <= trained
    assert trained == {n for n in initial if n.startswith(("dual_memory.", "spatial_fusion."))}
    assert any(n.startswith("dual_memory.") for n in changed) and any(n.startswith("spatial_fusion.") for n in changed)
    for name, p in model.base.named_parameters():
        torch.testing.assert_close(p, dict(base.named_parameters())[name], rtol=0, atol=0)  # the base stays frozen
    assert (tmp_path / "run" / "checkpoints").is_dir()


def test_lora_starts_at_identity_and_trains_only_adapters_and_memory(tmp_path):
    pytest.importorskip("peft")
    base = tiny_base("onevision")
    base.save_pretrained(tmp_path / "base")
    model = build_model(VLM2ModelConfig(base=str(tmp_path / "base"), vlm2=tiny_vlm2_config(use_spatial_fusion=False)))
    input_ids, pixels = video_batch("onevision", 2, 2)
    with torch.no_grad():
        before = model(input_ids=input_ids, pixel_values_videos=pixels).logits
    names = add_lora(model, r=4, alpha=8, dropout=0.0)
    assert names and all(".language_model." in n for n in names)
    with torch.no_grad():
        after = model(input_ids=input_ids, pixel_values_videos=pixels).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # LoRA B starts at zero
    model(input_ids=input_ids, pixel_values_videos=pixels, labels=input_ids).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    expected = {n for n, _ in model.named_parameters() if n.startswith("dual_memory.") or "lora_" in n}
    assert with_grad == expected


def test_conversation_messages_and_collate():
    turns = [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A"}]
    assert conversation_messages(turns) == [
        {"role": "user", "content": "<video>\nQ?"},
        {"role": "assistant", "content": "A"},
    ]
    plain = conversation_messages([{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A"}])
    assert plain[0]["content"] == "<video>\nQ?"
    with pytest.raises(ValueError, match="one video placeholder, in its first turn; found 2"):
        conversation_messages([{"from": "human", "value": "<image><video>"}, {"from": "gpt", "value": "A"}])
    with pytest.raises(ValueError, match="must come from one of"):
        conversation_messages([{"from": "system", "value": "x"}])
    items = [
        {
            "input_ids": torch.tensor([5, 6, 7]),
            "labels": torch.tensor([-100, 6, 7]),
            "pixel_values_videos": torch.zeros(2, 3, 4, 4),
        },
        {"input_ids": torch.tensor([8]), "labels": torch.tensor([8]), "pixel_values_videos": torch.ones(2, 3, 4, 4)},
    ]
    batch = collate_conversations(items, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    items[0]["camera_tokens"] = torch.zeros(2, 1, 3)
    with pytest.raises(ValueError, match="camera_tokens is given for some samples"):
        collate_conversations(items, pad_token_id=0)


def test_build_model_errors():
    with pytest.raises(ValueError, match=r"model\.base must name"):
        build_model(VLM2ModelConfig(vlm2=tiny_vlm2_config(memory_feature_dim=VISION_DIM)))


@pytest.mark.parametrize(
    "name, parts, lora",
    [
        ("vlm2_memory", {"dual_memory"}, False),
        ("vlm2_memory_fusion_projector", {"dual_memory", "fusion_block", "mm_mlp_adapter"}, False),
        ("vlm2_lora", {"dual_memory", "fusion_block", "mm_mlp_adapter"}, True),
    ],
)
def test_shipped_recipes_load(name, parts, lora):
    from pathlib import Path

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml")
    assert recipe.model.vlm2.tunable_parts() == parts and recipe.model.lora_enable is lora
    assert (recipe.model.vlm2.memory_L_w, recipe.model.vlm2.memory_L_e, recipe.data.num_frames) == (8, 32, 32)


def test_transformers_trainer_trains_the_memory(tmp_path):
    pytest.importorskip("accelerate")
    import functools

    from transformers import AutoTokenizer, Trainer, TrainingArguments

    from videostate.vlm.inputs import VideoPromptEncoder
    from videostate.vlm.training import ConversationVideoDataset, VLM2DataConfig, collate_for_hf_trainer

    _write_run(tmp_path)
    model = build_model(VLM2ModelConfig(base=str(tmp_path / "base"), vlm2=tiny_vlm2_config(tune_dual_memory=True)))
    encoder = VideoPromptEncoder(AutoTokenizer.from_pretrained(tmp_path / "base"), model.base.config)
    data = VLM2DataConfig(
        data_path=str(tmp_path / "data.json"),
        video_folder=str(tmp_path / "videos"),
        spatial_folder=str(tmp_path / "spatial"),
        num_frames=3,
    )
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        remove_unused_columns=False,
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=ConversationVideoDataset(data, encoder),
        data_collator=functools.partial(collate_for_hf_trainer, pad_token_id=0),
    )
    trainer.train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), initial[n])}
    assert changed and all(n.startswith("dual_memory.") for n in changed)
