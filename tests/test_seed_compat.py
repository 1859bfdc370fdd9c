"""The original bLLaMa's calls keep working as it wrote them (issue #13, seed compatibility): its import names,
`quantize_weights_to_ternary(verbose=...)` and `generate(..., num_return_sequences=..., device=...)`."""
import torch


def test_original_import_names():
    from bllama import Transformer, bLlama, bLlamaConfig
    from bllama.bitlinear import BitLinear
    from bllama.bllama import bLlama as bLlama2
    from bllama.config import bLlamaConfig as bLlamaConfig2
    from bllama.model.bitlinear import BitLinear as BitLinear2
    from bllama.model.transformer import Transformer as Transformer2
    from bllama.transformer import Transformer as Transformer3

    assert bLlama2 is bLlama and bLlamaConfig2 is bLlamaConfig and BitLinear is BitLinear2
    assert Transformer is Transformer2 is Transformer3


def test_original_quantize_and_generate_calls(sp_tokenizer, capsys):
    from bllama import bLlama, bLlamaConfig

    torch.manual_seed(0)
    config = bLlamaConfig(vocab_size=sp_tokenizer.vocab_size, seq_len=64, hidden_size=256, num_heads=4,
                          num_layers=1, ffn_size=256)
    bllm = bLlama(config)
    info = bllm.quantize_weights_to_ternary(verbose=False)
    assert capsys.readouterr().out == "" and bllm.is_quantized() and info["bytes_after"] < info["bytes_before"]
    texts = bllm.generate(prompt="In a shocking turn of events,", tokenizer=sp_tokenizer, max_len=8, do_sample=False,
                          top_k=3, repetition_penalty=2, num_return_sequences=2, device="cpu")
    assert len(texts) == 2 and texts[0] == texts[1] and texts[0].startswith("In a shocking turn of events,")
    one = bllm.generate(prompt="In a shocking turn of events,", tokenizer=sp_tokenizer, max_len=8, do_sample=True,
                        temperature=0.1, top_k=0, num_return_sequences=1, device=torch.device("cpu"))
    assert isinstance(one, str)

    bllm2 = bLlama(config)
    bllm2.quantize_weights_to_ternary(verbose=True)
    assert "quantized" in capsys.readouterr().out
