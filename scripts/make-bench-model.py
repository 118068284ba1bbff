#!/usr/bin/env python3
"""Writes the benchmark model: a llama-architecture model of 0.76B parameters (untied
embedding and head) with random weights and SmolLM2's vocabulary, in f16, for
llama-quantize to turn into Q4_K_M.

No Q4_K_M model of at least 0.5B parameters can be downloaded on the machines this project
is built on (Hugging Face is not reachable); speed depends on the shapes and the
quantization, not on what the weights learned, so random weights measure the same kernels
over the same bytes as a real model of this shape. (Its answers are noise: the agreement
checks use the real default and Gemma files.)

  make-bench-model.py DEFAULT_MODEL.gguf OUT.f16.gguf

Needs numpy and llama.cpp's gguf-py (on PYTHONPATH; scripts/build-llama-cpp.sh unpacks it).
"""
import sys

import numpy as np
import gguf

HIDDEN, LAYERS, FFN, HEADS, KV_HEADS = 1536, 24, 4096, 12, 4


def main(source_path: str, out_path: str) -> None:
    source = gguf.GGUFReader(source_path)
    writer = gguf.GGUFWriter(out_path, "llama")
    # SmolLM2's tokenizer, copied field by field (everything under tokenizer.*).
    for field in source.fields.values():
        if not field.name.startswith("tokenizer."):
            continue
        kind = field.types[0]
        sub_type = field.types[1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub_type)
    vocab = len(source.fields["tokenizer.ggml.tokens"].data)
    writer.add_name("exo-bench-llama-0.76b-random")
    writer.add_context_length(4096)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    rng = np.random.default_rng(20261128)
    kv = HIDDEN // HEADS * KV_HEADS

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * (1.0 / np.sqrt(cols))).astype(np.float16)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    writer.add_tensor("token_embd.weight", matrix(vocab, HIDDEN))
    writer.add_tensor("output_norm.weight", ones(HIDDEN))
    writer.add_tensor("output.weight", matrix(vocab, HIDDEN))
    for i in range(LAYERS):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", ones(HIDDEN))
        writer.add_tensor(p + "attn_q.weight", matrix(HIDDEN, HIDDEN))
        writer.add_tensor(p + "attn_k.weight", matrix(kv, HIDDEN))
        writer.add_tensor(p + "attn_v.weight", matrix(kv, HIDDEN))
        writer.add_tensor(p + "attn_output.weight", matrix(HIDDEN, HIDDEN))
        writer.add_tensor(p + "ffn_norm.weight", ones(HIDDEN))
        writer.add_tensor(p + "ffn_gate.weight", matrix(FFN, HIDDEN))
        writer.add_tensor(p + "ffn_up.weight", matrix(FFN, HIDDEN))
        writer.add_tensor(p + "ffn_down.weight", matrix(HIDDEN, FFN))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
