"""A tiny random-weight llama model as a GGUF file, generated, for the llama-cpp-python tests.

    python tests/support/tiny_gguf.py OUT.gguf     # needs the `gguf` package (and numpy)

No model is downloaded: the weights are random with a fixed seed, a few hundred KB. What the
tests need from it is not sense but shape: the server's grammar-constrained decoding must be
able to spell any JSON, and it must finish quickly. So:

- The vocabulary is SentencePiece-style: `<unk>`, `<s>`, `</s>`, the 256 byte tokens
  `<0x00>`..`<0xFF>` (byte fallback: any text can be tokenized and any byte produced), and one
  piece per printable ASCII character (`▁` is the space), so a grammar can pick any character.
- The weights are random, plus one deliberate direction: every token embedding carries a
  constant in dimension 0, and the output matrix reads that dimension with a fixed preference
  per token. Whatever the context, the model then prefers, in this order, end-of-text and the
  characters that close JSON (`"`, `}`, `]`, `,`), the digit `1`, and `true`. Under a grammar
  that yields the shortest valid document: empty strings, arrays and optional parts left out,
  numbers as `1` (so a judge's score is 1). The preferences are spaced by a factor larger than
  the server's default repeat penalty (1.1) and its default temperature (0.8) could bridge,
  so answers are the same run after run.

This file imports only numpy and gguf, so the llama venv can run it as a script.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SEED = 11
N_EMBD = 64
N_HEAD = 4
N_LAYER = 2
N_FF = 128
N_CTX = 2048
SPACE = "\u2581"  # SentencePiece's visible space

# Most preferred first. Each step down divides the logit by 1.25, more than the repeat penalty.
# `"` comes first of the characters: inside a string everything is allowed, and a string that
# does not close at once runs to max_tokens.
PREFERRED = ["</s>", '"', "}", "]", ",", "1", "t", "0", "a"]
DISLIKED = [SPACE, "<0x0A>", "<0x09>", "<0x0D>", "<0x20>"]  # whitespace: never spin on it

NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6  # gguf token types


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [UNKNOWN, CONTROL, CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [BYTE] * 256
    tokens.append(SPACE)
    types.append(NORMAL)
    for code in range(0x21, 0x7F):
        tokens.append(chr(code))
        types.append(NORMAL)
    # SentencePiece merges by score; with single characters only, any descending order works.
    scores = [0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(len(tokens) - 259)]
    return tokens, scores, types


def weights(tokens: list[str]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    n_vocab = len(tokens)

    def noise(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    embed = noise(n_vocab, N_EMBD)
    embed[:, 0] = 1.0  # the constant the output layer reads (dimension 0)
    output = noise(n_vocab, N_EMBD)
    output[:, 0] = 0.0
    index = {token: i for i, token in enumerate(tokens)}
    top = len(PREFERRED)
    for rank, token in enumerate(PREFERRED):
        output[index[token], 0] = 4.0 * 1.25 ** (top - rank)
    for token in DISLIKED:
        output[index[token], 0] = -4.0
    tensors = {"token_embd.weight": embed, "output_norm.weight": np.ones(N_EMBD, np.float32),
               "output.weight": output}
    for layer in range(N_LAYER):
        name = f"blk.{layer}"
        tensors.update({
            f"{name}.attn_norm.weight": np.ones(N_EMBD, np.float32),
            f"{name}.attn_q.weight": noise(N_EMBD, N_EMBD),
            f"{name}.attn_k.weight": noise(N_EMBD, N_EMBD),
            f"{name}.attn_v.weight": noise(N_EMBD, N_EMBD),
            f"{name}.attn_output.weight": noise(N_EMBD, N_EMBD),
            f"{name}.ffn_norm.weight": np.ones(N_EMBD, np.float32),
            f"{name}.ffn_gate.weight": noise(N_FF, N_EMBD),
            f"{name}.ffn_up.weight": noise(N_FF, N_EMBD),
            f"{name}.ffn_down.weight": noise(N_EMBD, N_FF),
        })
    return tensors


# A plain template, so the server's chat formatting comes from the file, not from a guess.
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
                 "{% endfor %}assistant: ")


def write(path: Path) -> Path:
    import gguf

    tokens, scores, types = vocabulary()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("loom-tiny-random")
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(0)  # all F32
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, tensor in weights(tokens).items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: tiny_gguf.py OUT.gguf")
    print(write(Path(sys.argv[1])))
