#!/usr/bin/env python3
"""Write the tiny deterministic Llama-shaped input models used by the golden fixtures.

Run with the mergekit venv's python (needs numpy, torch, safetensors):

    python make_models.py [OUT_DIR]        # default: <this dir>/models

Every value comes from numpy.random.default_rng with fixed seeds, computed in
float32 and then cast (round-to-nearest-even) to bfloat16 where needed, so the
output is byte-identical on every run and machine.

Models written (all LlamaForCausalLM, vocab 64, hidden 32, intermediate 48,
6 layers, 4 heads / 4 kv heads, untied lm_head):

  base_f32, ft1_f32, ft2_f32       float32; ft_i = base + 0.02 * N(0, 1)
  base_bf16, ft1_bf16, ft2_bf16    the same values cast to bfloat16
  ft1_bf16_sharded                 ft1_bf16's tensors split over two shard
                                   files plus model.safetensors.index.json

The *_bf16 models carry a transformers-4.x style config.json ("torch_dtype",
top-level "rope_theta"); the *_f32 models carry a transformers-5 style one
("dtype", "rope_parameters"), so the fixtures show how mergekit (through
transformers) rewrites both styles.  base_bf16 additionally has small
tokenizer files and a generation_config.json, which mergekit copies verbatim
when it is the donor model and --copy-tokenizer is on.
"""

import json
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import save_file

VOCAB = 64
HIDDEN = 32
INTER = 48
LAYERS = 6
HEADS = 4
KV_HEADS = 4
HEAD_DIM = HIDDEN // HEADS

BASE_SEED = 20261127
FT_SEEDS = {"ft1": 1001, "ft2": 1002}
FT_SCALE = np.float32(0.02)


def tensor_specs():
    """(name, shape, kind) in Llama architecture order."""
    specs = [("model.embed_tokens.weight", (VOCAB, HIDDEN), "embed")]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        specs += [
            (p + "input_layernorm.weight", (HIDDEN,), "norm"),
            (p + "self_attn.q_proj.weight", (HEADS * HEAD_DIM, HIDDEN), "matrix"),
            (p + "self_attn.k_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN), "matrix"),
            (p + "self_attn.v_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN), "matrix"),
            (p + "self_attn.o_proj.weight", (HIDDEN, HEADS * HEAD_DIM), "matrix"),
            (p + "post_attention_layernorm.weight", (HIDDEN,), "norm"),
            (p + "mlp.up_proj.weight", (INTER, HIDDEN), "matrix"),
            (p + "mlp.gate_proj.weight", (INTER, HIDDEN), "matrix"),
            (p + "mlp.down_proj.weight", (HIDDEN, INTER), "matrix"),
        ]
    specs += [
        ("model.norm.weight", (HIDDEN,), "norm"),
        ("lm_head.weight", (VOCAB, HIDDEN), "matrix"),
    ]
    return specs


def make_base():
    rng = np.random.default_rng(BASE_SEED)
    out = {}
    for name, shape, kind in tensor_specs():
        z = rng.standard_normal(shape).astype(np.float32)
        if kind == "norm":
            v = np.float32(1.0) + np.float32(0.05) * z
        elif kind == "embed":
            v = np.float32(0.5) * z
        else:
            v = z / np.float32(np.sqrt(shape[-1]))
        out[name] = v.astype(np.float32)
    return out


def make_finetune(base, seed):
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape, _kind in tensor_specs():
        z = rng.standard_normal(shape).astype(np.float32)
        out[name] = (base[name] + FT_SCALE * z).astype(np.float32)
    return out


def to_torch(arrays, dtype):
    return {
        name: torch.from_numpy(np.ascontiguousarray(arr)).to(dtype).contiguous()
        for name, arr in arrays.items()
    }


def config_v4(dtype_name):
    """A config.json as transformers 4.4x writes it (sorted keys, torch_dtype)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTER,
        "max_position_embeddings": 128,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV_HEADS,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": dtype_name,
        "transformers_version": "4.46.3",
        "use_cache": True,
        "vocab_size": VOCAB,
    }


def config_v5(dtype_name):
    """A config.json as transformers 5.x writes it (sorted keys, dtype)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "dtype": dtype_name,
        "eos_token_id": 2,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTER,
        "max_position_embeddings": 128,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV_HEADS,
        "pad_token_id": None,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-06,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "tie_word_embeddings": False,
        "transformers_version": "5.24.0",
        "use_cache": True,
        "vocab_size": VOCAB,
    }


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def tokenizer_files():
    # A byte-level-free, 64-entry BPE vocabulary with no merges: ids 0..3 are
    # special tokens, 4..63 are single printable characters.
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    chars += [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    chars += [str(d) for d in range(8)]
    vocab_list = specials + chars
    assert len(vocab_list) == VOCAB
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    added = [
        {
            "id": i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, tok in enumerate(specials)
    ]
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": "<unk>",
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [],
        },
    }
    tokenizer_config = {
        "added_tokens_decoder": {
            str(i): {
                "content": tok,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i, tok in enumerate(specials)
        },
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "model_max_length": 128,
        "pad_token": "<pad>",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<unk>",
    }
    generation_config = {
        "_from_model_config": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "transformers_version": "4.46.3",
    }
    return tokenizer_json, tokenizer_config, generation_config


def write_model(out_dir, name, tensors, config, shards=None):
    path = os.path.join(out_dir, name)
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)
    write_json(os.path.join(path, "config.json"), config)
    if shards is None:
        save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        return path
    weight_map = {}
    total = 0
    for idx, names in enumerate(shards):
        fname = f"model-{idx + 1:05d}-of-{len(shards):05d}.safetensors"
        part = {n: tensors[n] for n in names}
        save_file(part, os.path.join(path, fname), metadata={"format": "pt"})
        for n in names:
            weight_map[n] = fname
            total += tensors[n].numel() * tensors[n].element_size()
    assert sorted(weight_map) == sorted(tensors)
    index = {
        "metadata": {"total_size": total},
        "weight_map": dict(sorted(weight_map.items())),
    }
    write_json(os.path.join(path, "model.safetensors.index.json"), index)
    return path


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "models")
    os.makedirs(out_dir, exist_ok=True)

    base = make_base()
    arrays = {"base": base}
    for ft, seed in FT_SEEDS.items():
        arrays[ft] = make_finetune(base, seed)

    for key, arr in arrays.items():
        write_model(out_dir, f"{key}_f32", to_torch(arr, torch.float32), config_v5("float32"))
        write_model(out_dir, f"{key}_bf16", to_torch(arr, torch.bfloat16), config_v4("bfloat16"))

    # ft1_bf16 split over two shards: embeddings + layers 0..2 | layers 3..5 + norm + lm_head
    ft1 = to_torch(arrays["ft1"], torch.bfloat16)
    names = [n for n, _s, _k in tensor_specs()]
    first = [n for n in names if n == "model.embed_tokens.weight"
             or any(n.startswith(f"model.layers.{i}.") for i in range(3))]
    second = [n for n in names if n not in first]
    write_model(out_dir, "ft1_bf16_sharded", ft1, config_v4("bfloat16"), shards=[first, second])

    # Tokenizer + generation config for the usual donor model.
    tok_json, tok_cfg, gen_cfg = tokenizer_files()
    base_dir = os.path.join(out_dir, "base_bf16")
    write_json(os.path.join(base_dir, "tokenizer.json"), tok_json)
    write_json(os.path.join(base_dir, "tokenizer_config.json"), tok_cfg)
    write_json(os.path.join(base_dir, "generation_config.json"), gen_cfg)

    vocab_models(out_dir, arrays)


# --- Models with different vocabularies (issue 11) --------------------------------------
# Written after every model above, from their own seeds, so the models above are unchanged.
VOCAB_SEEDS = {"chatml": 3001, "padded": 3002, "ext": 3003}
# mergekit 0.1.5 appends a union's new ordinary (non-added) tokens in the iteration order of
# a Rust hash map (`get_vocab()`), which changes from run to run, and the tokens of several
# models in set order: union cases therefore use models whose new tokens are added tokens of
# one model (chatml); ext's ordinary extra tokens appear only with `tokenizer_source: base`.
CHATML = ["<|im_start|>", "<|im_end|>"]
EXT_TOKENS = ["ab", "cd", "ef", "gh"]
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def added_entry(i, tok, special=True, normalized=False):
    return {"id": i, "content": tok, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": normalized, "special": special}


def vocab_tokenizer(vocab, merges, added, extra_cfg=None):
    """tokenizer.json and tokenizer_config.json for a BPE vocabulary and added tokens."""
    tok_json, tok_cfg, _gen = tokenizer_files()
    tok_json["added_tokens"] = added
    tok_json["model"]["vocab"] = vocab
    tok_json["model"]["merges"] = merges
    tok_cfg["added_tokens_decoder"] = {
        str(e["id"]): {k: e[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                         "single_word", "special")}
        for e in added
    }
    tok_cfg.update(extra_cfg or {})
    import tokenizers  # the files must load with Hugging Face's own library
    tokenizers.Tokenizer.from_str(json.dumps(tok_json))
    return tok_json, tok_cfg


def grow_rows(t, rows, rng):
    """t (f32 array, vocab first) with extra rows drawn like the embedding."""
    extra = np.float32(0.5) * rng.standard_normal((rows - t.shape[0], t.shape[1])).astype(np.float32)
    return np.concatenate([t, extra], axis=0).astype(np.float32)


def write_vocab_model(out_dir, name, arrays, vocab_size, tok, tied=False):
    tensors = dict(arrays)
    cfg = config_v4("bfloat16")
    cfg["vocab_size"] = vocab_size
    if tied:
        del tensors["lm_head.weight"]
        cfg["tie_word_embeddings"] = True
    path = write_model(out_dir, name, to_torch(tensors, torch.bfloat16), cfg)
    write_json(os.path.join(path, "tokenizer.json"), tok[0])
    write_json(os.path.join(path, "tokenizer_config.json"), tok[1])


def vocab_models(out_dir, arrays):
    base_tok, _cfg, _gen = tokenizer_files()
    base_vocab = base_tok["model"]["vocab"]
    specials = [added_entry(i, t) for i, t in enumerate(["<unk>", "<s>", "</s>", "<pad>"])]

    # chatml: ft1 plus two special tokens <|im_start|> (64), <|im_end|> (65), rows appended.
    rng = np.random.default_rng(VOCAB_SEEDS["chatml"])
    chatml = dict(arrays["ft1"])
    for n in ("model.embed_tokens.weight", "lm_head.weight"):
        chatml[n] = grow_rows(chatml[n], VOCAB + 2, rng)
    vocab = dict(base_vocab)
    vocab.update({t: VOCAB + i for i, t in enumerate(CHATML)})
    added = specials + [added_entry(VOCAB + i, t) for i, t in enumerate(CHATML)]
    tok = vocab_tokenizer(vocab, [], added, {"eos_token": "<|im_end|>", "chat_template": CHATML_TEMPLATE})
    write_vocab_model(out_dir, "chatml_bf16", chatml, VOCAB + 2, tok)
    write_vocab_model(out_dir, "chatml_tied_bf16", chatml, VOCAB + 2, tok, tied=True)

    # padded: ft2 with the base tokenizer, embedding and lm_head padded to 128 rows.
    rng = np.random.default_rng(VOCAB_SEEDS["padded"])
    padded = dict(arrays["ft2"])
    for n in ("model.embed_tokens.weight", "lm_head.weight"):
        padded[n] = grow_rows(padded[n], 128, rng)
    tok = vocab_tokenizer(dict(base_vocab), [], list(specials))
    write_vocab_model(out_dir, "padded_bf16", padded, 128, tok)

    # ext: ft2 with the letters in reverse order (a non-identity permutation) and four
    # ordinary two-letter tokens with their merges at ids 64..67.
    rng = np.random.default_rng(VOCAB_SEEDS["ext"])
    ext = dict(arrays["ft2"])
    for n in ("model.embed_tokens.weight", "lm_head.weight"):
        ext[n] = grow_rows(ext[n], VOCAB + len(EXT_TOKENS), rng)
    order = sorted(base_vocab, key=lambda t: base_vocab[t])
    order = order[:4] + order[4:][::-1] + EXT_TOKENS
    vocab = {t: i for i, t in enumerate(order)}
    merges = [[t[0], t[1]] for t in EXT_TOKENS]
    tok = vocab_tokenizer(vocab, merges, list(specials))
    write_vocab_model(out_dir, "ext_bf16", ext, VOCAB + len(EXT_TOKENS), tok)

    # rev: ft2 with ext's reversed letters only (same 64 tokens, another order).
    rev = dict(arrays["ft2"])
    tok = vocab_tokenizer({t: i for i, t in enumerate(order[:VOCAB])}, [], list(specials))
    write_vocab_model(out_dir, "rev_bf16", rev, VOCAB, tok)

    # short: ft2 without the last token ("7", id 63): 63 tokens and rows.
    short = dict(arrays["ft2"])
    for n in ("model.embed_tokens.weight", "lm_head.weight"):
        short[n] = short[n][: VOCAB - 1]
    tok = vocab_tokenizer({t: i for t, i in base_vocab.items() if i < VOCAB - 1}, [], list(specials))
    write_vocab_model(out_dir, "short_bf16", short, VOCAB - 1, tok)


if __name__ == "__main__":
    main()
