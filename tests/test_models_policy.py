"""Policy (models/prompt.py, models/loading.py, models/batch.py, models/forward.py): the SPEC prompt, loading errors, the real 3B/7B
shapes on the meta device, prompt batches, and the parity of response log-probs."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from models.configs import REAL_CONFIG_DIR
from models.batch import left_align, prepare_inputs
from models.forward import response_logprobs
from models.loading import config_from_file, load_policy
from models.policy import SegZeroPolicy
from models.prompt import EXAMPLE_ANSWER, build_messages, build_prompt, normalize_query

REFERENCE = os.path.join(REAL_CONFIG_DIR, "qwen2_5_vl_{}.json")


# ------------------------------------------------------------------ prompt (SPEC section 2)

def test_prompt_is_the_spec_text_verbatim():
    expected = (
        "Please find 'the red circle' with bbox and points."
        "Compare the difference between objects and find the most closely matched one."
        "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
        "Output the one bbox and points of two largest inscribed circles inside the interested object in JSON format."
        "i.e., <think> thinking process here </think>"
        "<answer>{'bbox': [10,100,200,210], 'points_1': [30,110], 'points_2': [35,180]}</answer>"
    )
    assert build_prompt("The Red Circle.") == expected
    assert EXAMPLE_ANSWER in expected


def test_prompt_variants():
    no_example = build_prompt("cat", with_example=False)
    assert no_example.endswith("i.e., <think> thinking process here </think><answer></answer>")
    non_cot = build_prompt("cat", think=False)
    assert "<think>" not in non_cot
    assert "Output the final answer in <answer> </answer> tags." in non_cot
    assert non_cot.endswith(f"i.e., <answer>{EXAMPLE_ANSWER}</answer>")
    assert build_prompt("cat", think=False, with_example=False).endswith("i.e., <answer></answer>")


def test_query_normalisation_and_errors():
    assert normalize_query("..The Dog..") == "the dog"  # lower(), strip('.') as the authors do
    for bad in ["", "...", "  ", None, 3]:
        with pytest.raises(ValueError):
            normalize_query(bad)
    messages = build_messages("A Cat")
    assert [m["role"] for m in messages] == ["user"]  # system turn comes from the template
    assert messages[0]["content"][0] == {"type": "image"}
    assert messages[0]["content"][1]["text"] == build_prompt("A Cat")


# ------------------------------------------------------------------ loading

def test_config_only_directory_fails_before_loading(tmp_path):
    shutil.copy(REFERENCE.format("3b"), tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_policy(tmp_path)


def test_loading_errors_name_the_offending_value(tmp_path):
    with pytest.raises(FileNotFoundError, match="without config.json"):
        load_policy(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither an existing directory nor a hub id"):
        load_policy(str(tmp_path / "missing" / "dir"))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file"):
        load_policy(tmp_path / "file.bin")
    with pytest.raises(ValueError, match="'flash'"):
        load_policy("Qwen/Qwen2.5-VL-3B-Instruct", attn_implementation="flash")
    with pytest.raises(ValueError, match="'gpu'"):
        load_policy("Qwen/Qwen2.5-VL-3B-Instruct", device="gpu")
    with pytest.raises(ValueError, match="min_pixels"):
        load_policy("Qwen/Qwen2.5-VL-3B-Instruct", min_pixels=-1)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_policy("Qwen/Qwen2.5-VL-3B-Instruct", device="cuda")
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="flash-attn"):
            load_policy("Qwen/Qwen2.5-VL-3B-Instruct", attn_implementation="flash_attention_2")


@pytest.mark.parametrize("size,billions", [("3b", 3.75), ("7b", 8.29)])
def test_real_configs_build_on_meta_device(size, billions):
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = config_from_file(REFERENCE.format(size))
    with open(REFERENCE.format(size)) as f:
        raw = json.load(f)
    assert config.text_config.hidden_size == raw["text_config"]["hidden_size"]
    assert config.image_token_id == raw["image_token_id"]
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    count = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    assert abs(count / 1e9 - billions) < 0.01


# ------------------------------------------------------------------ batches and log-probs

def _images(n, seed=0):
    rs = np.random.RandomState(seed)
    return [rs.randint(0, 256, (40 + 17 * i, 70 + 5 * i, 3), dtype=np.uint8) for i in range(n)]


QUERIES = ["the red circle", "the largest blue square left of the green triangle and the star"]


def test_prepare_inputs_left_pads_and_keeps_original_sizes(tiny_qwen):
    _, processor = tiny_qwen
    batch = prepare_inputs(processor, _images(2), QUERIES)
    lengths = batch.attention_mask.sum(-1).tolist()
    assert lengths[0] < lengths[1] == batch.input_ids.shape[1]
    assert batch.attention_mask[0, 0] == 0 and batch.attention_mask[0, -1] == 1  # left padding
    assert batch.image_sizes == [(70, 40), (75, 57)]  # (width, height) of the originals
    one = batch.select([0])
    assert one.input_ids.shape[1] == lengths[0] and bool(one.attention_mask.all())
    torch.testing.assert_close(one.pixel_values, batch.pixel_values[:64])
    right = prepare_inputs(processor, _images(2), QUERIES, padding_side="right")
    assert torch.equal(left_align(right).input_ids, batch.input_ids)
    with pytest.raises(ValueError):
        prepare_inputs(processor, _images(1), QUERIES)
    with pytest.raises(ValueError, match="uint8"):
        prepare_inputs(processor, [np.zeros((4, 4, 3), dtype=np.float32)], ["x"])


def _responses(num_rows, length, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (num_rows, length), generator=g)
    lengths = torch.randint(1, length + 1, (num_rows,), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    return ids, mask


def test_batched_padded_logprobs_equal_unbatched(tiny_qwen):
    model, processor = tiny_qwen
    batch = prepare_inputs(processor, _images(2), QUERIES)
    group = 2
    ids, mask = _responses(4, 7, model.config.text_config.vocab_size)
    with torch.no_grad():
        together = response_logprobs(model, batch, ids, mask, group, temperature=0.7)
        for b in range(2):
            rows = slice(b * group, (b + 1) * group)
            alone = response_logprobs(model, batch.select([b]), ids[rows], mask[rows], group, temperature=0.7)
            on = mask[rows].bool()
            torch.testing.assert_close(together[rows][on], alone[on], atol=1e-5, rtol=0)


def test_left_and_right_padding_give_identical_logprobs(tiny_qwen):
    model, processor = tiny_qwen
    left = prepare_inputs(processor, _images(2), QUERIES, padding_side="left")
    right = prepare_inputs(processor, _images(2), QUERIES, padding_side="right")
    assert not torch.equal(left.attention_mask, right.attention_mask)
    ids, mask = _responses(2, 5, model.config.text_config.vocab_size, seed=1)
    with torch.no_grad():
        a = response_logprobs(model, left, ids, mask, 1)
        b = response_logprobs(model, right, ids, mask, 1)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_logprobs_match_a_plain_transformers_forward(tiny_qwen):
    # One prompt, one response: the plain forward (transformers computes the 3-D positions itself,
    # encodes the image inside forward, full logits) must give the same log-probs.
    model, processor = tiny_qwen
    batch = prepare_inputs(processor, _images(1), QUERIES[:1])
    ids, mask = _responses(1, 6, model.config.text_config.vocab_size, seed=2)
    mask[:] = 1
    prompt_len = batch.input_ids.shape[1]
    with torch.no_grad():
        full = model(
            input_ids=torch.cat([batch.input_ids, ids], 1),
            attention_mask=torch.cat([batch.attention_mask, mask], 1),
            pixel_values=batch.pixel_values, image_grid_thw=batch.image_grid_thw,
            mm_token_type_ids=torch.cat([batch.mm_token_type_ids, torch.zeros_like(ids)], 1),
        ).logits
        model.model.rope_deltas = None  # forward caches these; do not leak them into other tests
        expected = torch.log_softmax(full[0, prompt_len - 1:-1].float(), -1).gather(-1, ids[0, :, None])[:, 0]
        got = response_logprobs(model, batch, ids, mask, 1)
    torch.testing.assert_close(got[0], expected, atol=1e-5, rtol=0)


def test_logprobs_are_differentiable_through_language_and_vision(tiny_qwen):
    model, processor = tiny_qwen
    batch = prepare_inputs(processor, _images(1), QUERIES[:1])
    ids, mask = _responses(2, 4, model.config.text_config.vocab_size, seed=3)
    model.zero_grad()
    logp, entropy = response_logprobs(model, batch, ids, mask, 2, return_entropy=True)
    assert logp.shape == entropy.shape == (2, 4) and logp.dtype == torch.float32
    assert bool((logp <= 0).all()) and bool((entropy >= 0).all())
    # entropy of a distribution over V tokens is at most log V
    assert bool((entropy <= np.log(model.config.text_config.vocab_size) + 1e-4).all())
    (logp * mask).sum().backward()
    vision_grad = model.model.visual.blocks[0].attn.qkv.weight.grad
    text_grad = model.model.language_model.layers[0].self_attn.q_proj.weight.grad
    assert vision_grad is not None and vision_grad.abs().sum() > 0
    assert text_grad is not None and text_grad.abs().sum() > 0
    model.zero_grad()


def test_response_shape_errors(tiny_qwen):
    model, processor = tiny_qwen
    policy = SegZeroPolicy(model, processor)
    batch = policy.prepare(_images(2), QUERIES)
    ids, mask = _responses(3, 4, 100)
    with pytest.raises(ValueError, match="3 responses for 2 prompts"):
        policy.logprobs(batch, ids, mask, 2)
    with pytest.raises(ValueError, match="group_size"):
        policy.logprobs(batch, ids, mask, 0)
    with pytest.raises(ValueError, match=r"\[N, L\]"):
        policy.logprobs(batch, ids, mask[:, :2], 1)


def test_response_may_contain_an_image_placeholder_token(tiny_qwen):
    # A sampled response can contain <|image_pad|>; it is a plain token there (decoding embeds it
    # without image features), so it must not be taken for an image slot. Prefix parity: the
    # log-probs of the tokens BEFORE it do not depend on it (causality).
    model, processor = tiny_qwen
    batch = prepare_inputs(processor, _images(1), QUERIES[:1])
    ids, mask = _responses(1, 6, model.config.text_config.vocab_size, seed=4)
    mask[:] = 1
    with_pad = ids.clone()
    with_pad[0, 3] = model.config.image_token_id
    with torch.no_grad():
        a = response_logprobs(model, batch, ids, mask, 1)
        b = response_logprobs(model, batch, with_pad, mask, 1)
    assert bool(torch.isfinite(b).all())
    torch.testing.assert_close(a[0, :3], b[0, :3], atol=1e-6, rtol=0)
    assert not torch.allclose(a[0, 3:], b[0, 3:])
