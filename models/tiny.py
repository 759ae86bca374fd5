"""Tiny Qwen2.5-VL for tests and the default CPU run, deterministic from a seed.

Same classes as the real model (``Qwen2_5_VLForConditionalGeneration`` + ``Qwen2_5_VLProcessor``),
only smaller, so every code path (vision tower with window attention, 3-D rotary positions, chat
template, processor) is the real one:

- text: hidden 64, 2 layers, 4 heads of 16 (mrope_section [2, 3, 3] sums to 16 / 2), 2 KV heads.
- vision: depth 2, hidden 32, patch 14, 2 x 2 spatial merge, window 56 px, full attention in
  block 1 (block 0 uses window attention, as most blocks of the real tower do).
- processor: max_pixels = 112 x 112, so the 840 x 840 policy image becomes an 8 x 8 patch grid,
  i.e. 4 x 4 = 16 image tokens (the real model: 900). Coordinates the model writes stay in the
  840 frame (the rewards' frame); only the pixels the tower sees are smaller.
- tokenizer: byte-level BPE trained here with ``tokenizers`` on a small corpus (the prompt text,
  the answer format, and the synthetic-query words); digits split one per token so that
  coordinates are learnable; the Qwen special tokens; a Qwen-style chat template whose default
  system prompt is "You are a helpful assistant.". EOS = ``<|im_end|>``, pad = ``<|endoftext|>``.

``save_tiny_qwen(path)`` writes a checkpoint directory that :func:`models.policy.load_policy` loads
exactly like a downloaded Qwen2.5-VL checkpoint.
"""
from __future__ import annotations

import math
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from models.prompt import EXAMPLE_ANSWER, build_prompt
from models.vision_attention import use_windowed_vision_attention

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
TINY_VOCAB_SIZE = 1024
TINY_MIN_PIXELS = 56 * 56
TINY_MAX_PIXELS = 112 * 112

# Qwen-style ChatML template (written for this project): default system turn when the first
# message is not a system message; images become <|vision_start|><|image_pad|><|vision_end|>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray", "pink"]
_SHAPES = ["circle", "square", "triangle", "rectangle", "ellipse", "star", "cross", "diamond"]
_RELATIONS = [
    "left of", "right of", "above", "below", "next to", "largest", "smallest", "top", "bottom",
    "leftmost", "rightmost", "closest to", "biggest", "small", "large", "the", "a", "an", "one",
    "object", "shape", "which", "is", "that", "with", "of", "in", "image", "on",
]

_REASONING_WORDS = (
    "First I look at every object in the picture and compare their colours, sizes and positions. "
    "The query asks for a specific one, so I check which candidate matches the description best. "
    "There are several shapes: some are near the centre, others close to the border or the corner. "
    "Because this one is larger than the others and sits further to the left, it must be the target. "
    "Its bounding box covers the whole region, and two points inside mark the widest parts. "
    "Thinking process: identify, locate, measure, then answer with coordinates in JSON format. "
    "Person man woman child dog cat car bus table chair cup bottle plate horse bird tree sky road "
    "something where what why how many can could should would because therefore however between "
    "middle center corner edge background foreground upper lower front behind inside outside near far"
)

def _tokenizer_corpus() -> list[str]:
    """A fixed, small corpus: prompts, answers, reasoning words, digits (deterministic)."""
    lines = []
    for i, colour in enumerate(_COLOURS):
        for j, shape in enumerate(_SHAPES):
            rel = _RELATIONS[(i + j) % len(_RELATIONS)]
            query = f"the {colour} {shape} {rel} the {_COLOURS[(i + 3) % 10]} {_SHAPES[(j + 1) % 8]}"
            lines.append(build_prompt(query))
            lines.append(build_prompt(query, with_example=False, think=False))
            x1, y1 = (37 * i + 11 * j) % 700, (53 * j + 7 * i) % 700
            lines.append(
                f"<think> The {colour} {shape} is {rel} the other shape. </think> "
                f'<answer>{{"bbox": [{x1},{y1},{x1 + 120},{y1 + 95}], '
                f'"points_1": [{x1 + 30},{y1 + 40}], "points_2": [{x1 + 80},{y1 + 50}]}}</answer>'
            )
    lines.append(" ".join(_RELATIONS + _COLOURS + _SHAPES))
    lines.append(_REASONING_WORDS)
    lines.append(_REASONING_WORDS.lower().replace(".", " ,"))
    lines.append(EXAMPLE_ANSWER + " 0 1 2 3 4 5 6 7 8 9 , . : [ ] { } ' \"")
    lines.append(DEFAULT_SYSTEM_PROMPT + " system user assistant")
    return lines


def build_tiny_tokenizer(vocab_size: int = TINY_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Byte-level BPE with the Qwen special tokens and chat template (see module docstring).

    Special token ids are 0..6 in the order of SPECIAL_TOKENS; training is deterministic (same
    corpus, same vocabulary every call).
    """
    tok = Tokenizer(models.BPE())
    # Digits first, one per pre-token, so no merge can join two digits; then GPT-2 byte-level.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )
    return fast


def build_tiny_processor(tokenizer: PreTrainedTokenizerFast | None = None) -> Qwen2_5_VLProcessor:
    """Qwen2.5-VL processor with a tiny image budget (840 x 840 -> 112 x 112 -> 16 tokens)."""
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    image_processor = Qwen2VLImageProcessor(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS)
    video_processor = Qwen2VLVideoProcessor(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def tiny_qwen_config(tokenizer: PreTrainedTokenizerFast, vision_overrides: dict | None = None,
                     initializer_range: float = 0.2, **text_overrides) -> Qwen2_5_VLConfig:
    """The tiny configuration; ``text_overrides`` / ``vision_overrides`` replace entries of the
    text / vision config."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        # head_dim = 64 / 4 = 16 -> 8 rotary frequencies split (temporal, height, width) = 2 + 3 + 3
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        tie_word_embeddings=True,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        # wider than the real 0.02 so that a random tiny model writes varied tokens (greedy
        # decoding from a near-uniform distribution repeats one token forever)
        initializer_range=initializer_range,
    )
    text_config.update(text_overrides)
    vision_config = dict(
        depth=2,
        hidden_size=32,
        num_heads=2,
        intermediate_size=64,
        patch_size=14,
        temporal_patch_size=2,
        spatial_merge_size=2,
        window_size=56,
        fullatt_block_indexes=[1],
        out_hidden_size=text_config["hidden_size"],
        in_channels=3,
        initializer_range=initializer_range,
    )
    vision_config.update(vision_overrides or {})
    vision_config["out_hidden_size"] = text_config["hidden_size"]
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=text_config["tie_word_embeddings"],
        initializer_range=initializer_range,
    )


def build_tiny_qwen(seed: int = 0, *, attn_implementation: str = "sdpa"):
    """(model, processor): a randomly initialised tiny Qwen2.5-VL in fp32, on CPU, in eval mode.

    The same seed gives the same weights; the global torch RNG is left as it was.
    """
    processor = build_tiny_processor()
    model = _random_qwen(tiny_qwen_config(processor.tokenizer), seed, attn_implementation,
                         windowed_vision=attn_implementation == "sdpa")
    return model, processor


def _random_qwen(config, seed: int, attn_implementation: str, windowed_vision: bool):
    """A randomly initialised Qwen2.5-VL of ``config`` in fp32, CPU, eval mode, from ``seed`` (the
    global torch RNG is left as it was), stopping at the config's EOS and padding with its pad id."""
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    if windowed_vision:
        use_windowed_vision_attention(model)
    # the text config holds the ids in every transformers 5 release (5.17 drops the top-level ones)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    return model.float().eval()


def save_tiny_qwen(path: str | os.PathLike, seed: int = 0) -> str:
    """Write a tiny checkpoint directory (weights, config, processor, tokenizer); returns the path."""
    model, processor = build_tiny_qwen(seed)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def real_shape_processor() -> Qwen2_5_VLProcessor:
    """The tiny tokenizer with the real image processor (defaults: an 840 x 840 image is 900 image
    tokens, as with Qwen2.5-VL-Instruct), for randomly initialised models of the real shapes."""
    tokenizer = build_tiny_tokenizer()
    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                               video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)


# --------------------------------------------------------------------------------------------------
# The toy shape: sized to learn localisation on 2 CPU cores (models.toy pretrains it)

TOY_PIXELS = 224 * 224  # an 840 x 840 policy image -> 224 x 224 -> 16 x 16 patches -> 8 x 8 = 64 tokens
#: coordinate tokens of the toy tokenizer: "0" ... "840", one token per value of the 840 frame
TOY_COORDINATES = 841
#: scale s of the coordinate tokens' output rows (see build_toy_qwen)
COORDINATE_LOGIT_SCALE = 200.0


def build_toy_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny tokenizer plus one token per coordinate value "0" ... "840".

    Departure from Qwen2.5 (whose tokenizer writes a number one digit per token): the toy policy
    writes each coordinate as ONE token, so that localising is a choice among positions that a
    model of a million parameters learns on 2 CPU cores. The coordinate tokens are added tokens,
    matched before the BPE, longest first: "840" is one token, "8400" is "840" + "0"; the text and
    the rewards are unchanged.
    """
    tok = build_tiny_tokenizer()
    tok.add_tokens([str(v) for v in range(TOY_COORDINATES)])
    return tok


def build_toy_processor(tokenizer: PreTrainedTokenizerFast | None = None) -> Qwen2_5_VLProcessor:
    """The toy tokenizer (:func:`build_toy_tokenizer`) with a 224 x 224 image budget (64 image tokens)."""
    tokenizer = tokenizer if tokenizer is not None else build_toy_tokenizer()
    kw = dict(min_pixels=TOY_PIXELS, max_pixels=TOY_PIXELS)
    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**kw), tokenizer=tokenizer,
                               video_processor=Qwen2VLVideoProcessor(**kw), chat_template=CHAT_TEMPLATE)


def toy_qwen_config(tokenizer: PreTrainedTokenizerFast, **text_overrides) -> Qwen2_5_VLConfig:
    """The toy shape (same classes as the real model):

    - text: hidden 128, 4 layers, 4 heads of 32 (mrope_section [4, 6, 6] sums to 32 / 2), 2 KV
      heads, MLP 384, untied input and output embeddings (as in Qwen2.5-VL-7B);
    - vision: depth 2, hidden 64, 2 heads of 32, MLP 128, full attention in both blocks (one
      window covers the 224 x 224 view); 64 image tokens (:data:`TOY_PIXELS`);
    - initializer_range 0.02 (the real model's; the pretraining starts from it).
    """
    kw = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]},
              tie_word_embeddings=False)
    kw.update(text_overrides)
    return tiny_qwen_config(
        tokenizer, initializer_range=0.02,
        vision_overrides=dict(depth=2, hidden_size=64, num_heads=2, intermediate_size=128,
                              window_size=224, fullatt_block_indexes=[0, 1]), **kw)


def coordinate_code(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal code [N, dim] of coordinate values [N]: pairs (cos, sin)(2 pi v / P_k) with periods
    P_k geometric from 30 to 3,000 (dim / 2 of them): near values have near codes."""
    periods = torch.logspace(math.log10(30.0), math.log10(3000.0), dim // 2, dtype=torch.float64)
    angle = 2 * math.pi * values.double()[:, None] / periods[None, :]
    return torch.stack([angle.cos(), angle.sin()], dim=-1).reshape(len(values), -1).float()


def build_toy_qwen(seed: int = 0, *, attn_implementation: str = "sdpa", **text_overrides):
    """(model, processor): the randomly initialised toy Qwen2.5-VL (:func:`toy_qwen_config`),
    fp32, CPU, eval mode; the same seed gives the same weights.

    The coordinate tokens (value v, v_hat = v / 840) start structured:

    - input embedding: :func:`coordinate_code` of v at the initializer's scale, so that a
      coordinate's neighbours share what is learnt about it;
    - output row: s (v_hat, -v_hat^2 / 2) in hidden dims 0 and 1, 0 elsewhere
      (s = :data:`COORDINATE_LOGIT_SCALE`), so that a final hidden state with h_0 = b x_hat and
      h_1 = b gives the logits s b (v_hat x_hat - v_hat^2 / 2) = -s b (v_hat - x_hat)^2 / 2 + const:
      a peak at x_hat whose width shrinks as b grows. Reading a position out of the hidden state
      is then linear, which the toy model learns in minutes (Qwen2.5-VL learns its number tokens
      in a pre-training the toy run does not have).
    """
    processor = build_toy_processor()
    model = _random_qwen(toy_qwen_config(processor.tokenizer, **text_overrides), seed, attn_implementation,
                         windowed_vision=False)
    tok = processor.tokenizer
    ids = torch.tensor(tok.convert_tokens_to_ids([str(v) for v in range(TOY_COORDINATES)]))
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    std = model.config.text_config.initializer_range
    v_hat = torch.arange(TOY_COORDINATES, dtype=torch.float32) / (TOY_COORDINATES - 1)
    with torch.no_grad():
        emb[ids] = coordinate_code(torch.arange(TOY_COORDINATES), emb.shape[1]) * std * math.sqrt(2.0)
        head[ids] = 0.0
        head[ids, 0] = COORDINATE_LOGIT_SCALE * v_hat
        head[ids, 1] = -COORDINATE_LOGIT_SCALE * v_hat ** 2 / 2
    return model, processor
