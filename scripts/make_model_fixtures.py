#!/usr/bin/python3
"""Reference outputs for the model zoo tests (tests/models_test.cpp).

Builds tiny ViT, BERT and LLaMA models from torch.nn.functional primitives (no transformers package:
Debian's python3-torch is enough), with random weights under Hugging Face's checkpoint keys, and
writes for each model:

    tests/fixtures/models/<name>/config.json        Hugging Face config
    tests/fixtures/models/<name>/model.safetensors  weights
    tests/fixtures/models/<name>/reference.safetensors  inputs and expected outputs (fp32)

The math here is written out independently of the C++ library, from the architectures' definitions.
Run from the repository root:  /usr/bin/python3 scripts/make_model_fixtures.py
"""
import json
import math
import os
import struct

import torch
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "models")
DTYPES = {torch.float32: "F32", torch.int64: "I64", torch.bool: "BOOL"}


def save_safetensors(path, tensors):
    """Minimal safetensors writer: 8-byte little-endian header size, JSON header, raw data."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        data = t.numpy().tobytes()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def write(name, config, weights, reference):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    save_safetensors(os.path.join(d, "model.safetensors"), weights)
    save_safetensors(os.path.join(d, "reference.safetensors"), reference)


class Weights(dict):
    """Random weights, created in a fixed order from a seeded generator."""

    def __init__(self, seed):
        super().__init__()
        self.g = torch.Generator().manual_seed(seed)

    def lin(self, key, out_f, in_f, bias=True):
        self[key + ".weight"] = torch.randn(out_f, in_f, generator=self.g) * (1.0 / math.sqrt(in_f))
        if bias:
            self[key + ".bias"] = torch.randn(out_f, generator=self.g) * 0.1

    def norm(self, key, dim, bias=True):
        self[key + ".weight"] = 1.0 + 0.1 * torch.randn(dim, generator=self.g)
        if bias:
            self[key + ".bias"] = 0.1 * torch.randn(dim, generator=self.g)

    def param(self, key, *shape, scale=0.5):
        self[key] = torch.randn(*shape, generator=self.g) * scale


def attention(x, wq, bq, wk, bk, wv, bv, heads, kv_heads, head_dim, mask=None, rope=None):
    """softmax(q k^T / sqrt(d) + mask) v with grouped key/value heads; mask is additive [B,1,T,S]."""
    b, t, _ = x.shape
    q = F.linear(x, wq, bq).view(b, t, heads, head_dim).transpose(1, 2)
    k = F.linear(x, wk, bk).view(b, t, kv_heads, head_dim).transpose(1, 2)
    v = F.linear(x, wv, bv).view(b, t, kv_heads, head_dim).transpose(1, 2)
    if rope is not None:
        cos, sin = rope
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    rep = heads // kv_heads
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
    if mask is not None:
        scores = scores + mask
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, heads * head_dim)


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos[:, None] + rot * sin[:, None]


NEG = torch.finfo(torch.float32).min


# ----------------------------------------------------------------------------------------------- ViT
def vit():
    cfg = dict(model_type="vit", architectures=["ViTForImageClassification"], hidden_size=32, num_hidden_layers=2,
               num_attention_heads=4, intermediate_size=64, hidden_act="gelu", hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12, image_size=28, patch_size=7, num_channels=1,
               qkv_bias=True, id2label={str(i): f"class_{i}" for i in range(10)}, unknown_future_key={"a": 1})
    D, L, H, I, P, C = 32, 2, 4, 64, 7, 1
    n = (28 // P) ** 2
    w = Weights(1)
    w.param("vit.embeddings.cls_token", 1, 1, D)
    w.param("vit.embeddings.position_embeddings", 1, n + 1, D)
    w["vit.embeddings.patch_embeddings.projection.weight"] = torch.randn(D, C, P, P, generator=w.g) / P
    w["vit.embeddings.patch_embeddings.projection.bias"] = 0.1 * torch.randn(D, generator=w.g)
    for i in range(L):
        p = f"vit.encoder.layer.{i}."
        for m in ("query", "key", "value"):
            w.lin(p + "attention.attention." + m, D, D)
        w.lin(p + "attention.output.dense", D, D)
        w.lin(p + "intermediate.dense", I, D)
        w.lin(p + "output.dense", D, I)
        w.norm(p + "layernorm_before", D)
        w.norm(p + "layernorm_after", D)
    w.norm("vit.layernorm", D)
    w.lin("classifier", 10, D)

    px = torch.randn(3, C, 28, 28, generator=torch.Generator().manual_seed(7))
    x = F.conv2d(px, w["vit.embeddings.patch_embeddings.projection.weight"],
                 w["vit.embeddings.patch_embeddings.projection.bias"], stride=P).flatten(2).transpose(1, 2)
    x = torch.cat([w["vit.embeddings.cls_token"].expand(3, -1, -1), x], 1) + w["vit.embeddings.position_embeddings"]
    for i in range(L):
        p = f"vit.encoder.layer.{i}."
        g = lambda k: w[p + k]
        h = F.layer_norm(x, (D,), g("layernorm_before.weight"), g("layernorm_before.bias"), 1e-12)
        a = attention(h, *(w[p + f"attention.attention.{m}.{t}"] for m in ("query", "key", "value") for t in ("weight", "bias")),
                      H, H, D // H)
        x = x + F.linear(a, g("attention.output.dense.weight"), g("attention.output.dense.bias"))
        h = F.layer_norm(x, (D,), g("layernorm_after.weight"), g("layernorm_after.bias"), 1e-12)
        h = F.gelu(F.linear(h, g("intermediate.dense.weight"), g("intermediate.dense.bias")))
        x = x + F.linear(h, g("output.dense.weight"), g("output.dense.bias"))
    last = F.layer_norm(x, (D,), w["vit.layernorm.weight"], w["vit.layernorm.bias"], 1e-12)
    logits = F.linear(last[:, 0], w["classifier.weight"], w["classifier.bias"])
    write("vit", cfg, w, {"pixel_values": px, "last_hidden_state": last, "logits": logits})


# ---------------------------------------------------------------------------------------------- BERT
def bert():
    V, D, L, H, I, MP = 100, 32, 2, 4, 64, 64
    cfg = dict(model_type="bert", architectures=["BertForSequenceClassification"], vocab_size=V, hidden_size=D,
               num_hidden_layers=L, num_attention_heads=H, intermediate_size=I, hidden_act="gelu",
               hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=MP,
               type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0, position_embedding_type="absolute",
               id2label={"0": "neg", "1": "neu", "2": "pos"})
    w = Weights(2)
    w.param("bert.embeddings.word_embeddings.weight", V, D)
    w.param("bert.embeddings.position_embeddings.weight", MP, D)
    w.param("bert.embeddings.token_type_embeddings.weight", 2, D)
    w.norm("bert.embeddings.LayerNorm", D)
    for i in range(L):
        p = f"bert.encoder.layer.{i}."
        for m in ("query", "key", "value"):
            w.lin(p + "attention.self." + m, D, D)
        w.lin(p + "attention.output.dense", D, D)
        w.norm(p + "attention.output.LayerNorm", D)
        w.lin(p + "intermediate.dense", I, D)
        w.lin(p + "output.dense", D, I)
        w.norm(p + "output.LayerNorm", D)
    w.lin("bert.pooler.dense", D, D)
    w.lin("classifier", 3, D)

    g0 = torch.Generator().manual_seed(11)
    ids = torch.randint(1, V, (3, 9), generator=g0)
    types = torch.zeros(3, 9, dtype=torch.long)
    types[:, 5:] = 1
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0  # row 1: three padding tokens at the end
    mask[2, 4:] = 0
    ids[mask == 0] = 0

    def encode(ids, types, mask):
        b, t = ids.shape
        x = (F.embedding(ids, w["bert.embeddings.word_embeddings.weight"])
             + F.embedding(types, w["bert.embeddings.token_type_embeddings.weight"])
             + w["bert.embeddings.position_embeddings.weight"][:t])
        x = F.layer_norm(x, (D,), w["bert.embeddings.LayerNorm.weight"], w["bert.embeddings.LayerNorm.bias"], 1e-12)
        add = (1.0 - mask[:, None, None, :].float()) * NEG
        for i in range(L):
            p = f"bert.encoder.layer.{i}."
            g = lambda k: w[p + k]
            a = attention(x, *(w[p + f"attention.self.{m}.{t}"] for m in ("query", "key", "value") for t in ("weight", "bias")),
                          H, H, D // H, mask=add)
            a = F.linear(a, g("attention.output.dense.weight"), g("attention.output.dense.bias"))
            x = F.layer_norm(a + x, (D,), g("attention.output.LayerNorm.weight"), g("attention.output.LayerNorm.bias"), 1e-12)
            h = F.gelu(F.linear(x, g("intermediate.dense.weight"), g("intermediate.dense.bias")))
            h = F.linear(h, g("output.dense.weight"), g("output.dense.bias"))
            x = F.layer_norm(h + x, (D,), g("output.LayerNorm.weight"), g("output.LayerNorm.bias"), 1e-12)
        pooled = torch.tanh(F.linear(x[:, 0], w["bert.pooler.dense.weight"], w["bert.pooler.dense.bias"]))
        return x, pooled

    last, pooled = encode(ids, types, mask)
    logits = F.linear(pooled, w["classifier.weight"], w["classifier.bias"])
    token_logits = F.linear(last, w["classifier.weight"], w["classifier.bias"])
    # The padded rows, encoded alone without their padding: real positions must match.
    last_row1, _ = encode(ids[1:2, :6], types[1:2, :6], torch.ones(1, 6, dtype=torch.long))
    write("bert", cfg, w, {"input_ids": ids, "token_type_ids": types, "attention_mask": mask,
                           "last_hidden_state": last, "pooler_output": pooled, "logits": logits,
                           "token_logits": token_logits, "row1_unpadded_last_hidden_state": last_row1})


# --------------------------------------------------------------------------------------------- LLaMA
def llama(name, tie, head_dim, heads, kv_heads, rope_scaling):
    V, D, L, I = 100, 32, 2, 64
    theta = 500000.0 if rope_scaling else 10000.0
    cfg = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=V, hidden_size=D,
               intermediate_size=I, num_hidden_layers=L, num_attention_heads=heads, num_key_value_heads=kv_heads,
               head_dim=head_dim, hidden_act="silu", max_position_embeddings=128, rms_norm_eps=1e-6,
               rope_theta=theta, rope_scaling=rope_scaling, tie_word_embeddings=tie, attention_bias=False,
               mlp_bias=False, bos_token_id=1, eos_token_id=2, torch_dtype="float32")
    w = Weights(3 if not tie else 4)
    w.param("model.embed_tokens.weight", V, D)
    for i in range(L):
        p = f"model.layers.{i}."
        w.lin(p + "self_attn.q_proj", heads * head_dim, D, bias=False)
        w.lin(p + "self_attn.k_proj", kv_heads * head_dim, D, bias=False)
        w.lin(p + "self_attn.v_proj", kv_heads * head_dim, D, bias=False)
        w.lin(p + "self_attn.o_proj", D, heads * head_dim, bias=False)
        w.lin(p + "mlp.gate_proj", I, D, bias=False)
        w.lin(p + "mlp.up_proj", I, D, bias=False)
        w.lin(p + "mlp.down_proj", D, I, bias=False)
        w.norm(p + "input_layernorm", D, bias=False)
        w.norm(p + "post_attention_layernorm", D, bias=False)
    w.norm("model.norm", D, bias=False)
    if not tie:
        w.lin("lm_head", V, D, bias=False)
    head = w["model.embed_tokens.weight"] if tie else w["lm_head.weight"]

    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    if rope_scaling:  # Llama 3.1 frequency smoothing
        f, lo, hi, old = (rope_scaling[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                                     "original_max_position_embeddings"))
        wavelen = 2 * math.pi / inv_freq
        new = []
        for fr, wl in zip(inv_freq.tolist(), wavelen.tolist()):
            if wl < old / hi:
                new.append(fr)
            elif wl > old / lo:
                new.append(fr / f)
            else:
                s = (old / wl - lo) / (hi - lo)
                new.append((1 - s) * fr / f + s * fr)
        inv_freq = torch.tensor(new)

    def rms(x, wt):
        return wt * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    def forward(ids, mask=None, pos=None):
        b, t = ids.shape
        if pos is None:
            pos = torch.arange(t)[None].expand(b, t)
        freqs = pos[..., None].float() * inv_freq
        emb = torch.cat([freqs, freqs], -1)
        rope = (emb.cos(), emb.sin())
        allowed = torch.ones(t, t).tril().bool()[None, None]
        if mask is not None:
            allowed = allowed & mask[:, None, None, :].bool()
        add = torch.zeros(allowed.shape).masked_fill(~allowed, NEG)
        x = F.embedding(ids, w["model.embed_tokens.weight"])
        for i in range(L):
            p = f"model.layers.{i}."
            h = rms(x, w[p + "input_layernorm.weight"])
            a = attention(h, w[p + "self_attn.q_proj.weight"], None, w[p + "self_attn.k_proj.weight"], None,
                          w[p + "self_attn.v_proj.weight"], None, heads, kv_heads, head_dim, mask=add, rope=rope)
            x = x + F.linear(a, w[p + "self_attn.o_proj.weight"])
            h = rms(x, w[p + "post_attention_layernorm.weight"])
            h = F.linear(F.silu(F.linear(h, w[p + "mlp.gate_proj.weight"])) * F.linear(h, w[p + "mlp.up_proj.weight"]),
                         w[p + "mlp.down_proj.weight"])
            x = x + h
        return F.linear(rms(x, w["model.norm.weight"]), head)

    g0 = torch.Generator().manual_seed(13)
    ids = torch.randint(3, V, (2, 8), generator=g0)
    logits = forward(ids)
    # Row 1 left-padded by 3: positions count real tokens only.
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    padded_logits = forward(ids, mask, pos)
    # Greedy decoding by full recomputation each step (no cache), eos disabled by its absence.
    seq = ids[:1, :5]
    for _ in range(6):
        nxt = forward(seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    write(name, cfg, w, {"input_ids": ids, "logits": logits, "attention_mask": mask, "padded_logits": padded_logits,
                         "greedy_prompt": ids[:1, :5].clone(), "greedy_tokens": seq})


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    vit()
    bert()
    llama("llama", tie=False, head_dim=8, heads=4, kv_heads=2, rope_scaling=None)
    llama("llama_tied", tie=True, head_dim=16, heads=4, kv_heads=1,
          rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                            original_max_position_embeddings=16))
    print("wrote", os.path.normpath(OUT))
