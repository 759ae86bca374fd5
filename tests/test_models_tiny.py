"""Tiny Qwen2.5-VL (models/tiny.py): deterministic tokenizer and weights, processor budget, and a
save_pretrained / load_policy round trip that behaves exactly like a real checkpoint."""
import numpy as np
import torch
from PIL import Image

from models.batch import prepare_inputs
from models.loading import load_policy
from models.prompt import build_messages
from models.tiny import (
    DEFAULT_SYSTEM_PROMPT, SPECIAL_TOKENS, build_tiny_qwen, build_tiny_tokenizer, save_tiny_qwen,
)


def test_tokenizer_is_deterministic_and_has_qwen_special_tokens():
    a, b = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    assert 500 <= len(a) <= 2048
    for i, token in enumerate(SPECIAL_TOKENS):
        assert a.convert_tokens_to_ids(token) == i  # trained first, in this order
        assert a.tokenize(f"x{token}y") == ["x", token, "y"]  # never split
    assert a.eos_token == "<|im_end|>" and a.pad_token == "<|endoftext|>"
    assert a.padding_side == "left"


def test_digits_are_one_token_each_and_text_round_trips():
    tok = build_tiny_tokenizer()
    text = '<answer>{"bbox": [120,345,7,839], "points_1": [30,110]}</answer>'
    pieces = tok.tokenize("[120,345]")
    assert pieces == ["[", "1", "2", "0", ",", "3", "4", "5", "]"]
    assert tok.decode(tok(text)["input_ids"]) == text


def test_chat_template_has_default_system_prompt_and_one_image_placeholder():
    tok = build_tiny_tokenizer()
    text = tok.apply_chat_template(build_messages("a dog"), tokenize=False, add_generation_prompt=True)
    assert text.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n")
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 1
    assert text.endswith("</answer><|im_end|>\n<|im_start|>assistant\n")


def test_tiny_model_is_deterministic_from_seed_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    m0, _ = build_tiny_qwen(seed=0)
    after = torch.rand(3)
    assert torch.equal(before, after)  # building did not consume the global generator
    m0b, _ = build_tiny_qwen(seed=0)
    m1, _ = build_tiny_qwen(seed=1)
    s0, s0b, s1 = m0.state_dict(), m0b.state_dict(), m1.state_dict()
    assert all(torch.equal(s0[k], s0b[k]) for k in s0)
    assert not torch.equal(s0["lm_head.weight"], s1["lm_head.weight"])
    assert next(m0.parameters()).dtype == torch.float32
    text = m0.config.text_config
    assert sum(text.rope_parameters["mrope_section"]) == text.hidden_size // text.num_attention_heads // 2


def test_processor_brings_840_frame_down_to_16_image_tokens():
    _, processor = build_tiny_qwen()
    image = np.zeros((300, 500, 3), dtype=np.uint8)
    batch = prepare_inputs(processor, [image], ["a cat"])
    # 840 x 840 -> max_pixels 112 x 112 -> 8 x 8 patches of 14 -> merged 2 x 2 -> 16 tokens
    assert batch.image_grid_thw.tolist() == [[1, 8, 8]]
    assert int((batch.input_ids == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()) == 16
    assert batch.pixel_values.shape == (64, 3 * 2 * 14 * 14)


def test_save_and_load_policy_round_trip_gives_same_logits(tmp_path):
    path = save_tiny_qwen(tmp_path / "tiny", seed=3)
    model, processor = build_tiny_qwen(seed=3)
    loaded, loaded_processor = load_policy(path)
    assert loaded.dtype == torch.float32 and not loaded.training
    image = Image.fromarray(np.arange(64 * 48 * 3, dtype=np.uint8).reshape(48, 64, 3))
    a = prepare_inputs(processor, [image], ["the red square"])
    b = prepare_inputs(loaded_processor, [image], ["the red square"])
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.pixel_values, b.pixel_values)
    with torch.no_grad():
        kw = dict(attention_mask=a.attention_mask, pixel_values=a.pixel_values,
                  image_grid_thw=a.image_grid_thw, mm_token_type_ids=a.mm_token_type_ids)
        ref = model(input_ids=a.input_ids, **kw).logits
        got = loaded(input_ids=a.input_ids, **kw).logits
    torch.testing.assert_close(got, ref, atol=0, rtol=0)
    # the pixel budget is adjustable at load time: 840 x 840 -> 56 x 56 -> 4 x 4 patches of 14
    _, small = load_policy(path, min_pixels=28 * 28, max_pixels=56 * 56)
    assert prepare_inputs(small, [image], ["x"]).image_grid_thw.tolist() == [[1, 4, 4]]
