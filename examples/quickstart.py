"""The peftkit workflow in one page: wrap a model with LoRA, train the adapter, save it, load it, merge it.

Runs on a tiny Llama built from a config (no download). `peftkit demo` (the CLI) runs the same workflow
on a real pretrained model.
"""

import tempfile

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from peftkit import LoraConfig, PeftModel, get_peft_model


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
    )
    return LlamaForCausalLM(config)


def main() -> None:
    model = get_peft_model(
        tiny_llama(), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    model.print_trainable_parameters()
    batch = torch.randint(0, 256, (4, 32))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(20):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 5 == 0 or step == 19:
            print(f"step {step:2d}  loss {loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=batch).logits
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        reloaded = PeftModel.from_pretrained(tiny_llama(), folder).eval()
        with torch.no_grad():
            same = torch.allclose(reloaded(input_ids=batch).logits, trained, atol=1e-5)
        print(f"reloaded adapter reproduces the trained logits: {same}")
        merged = reloaded.merge_and_unload()
        with torch.no_grad():
            same_merged = torch.allclose(merged(input_ids=batch).logits, trained, atol=1e-4)
        print(f"merged model reproduces the trained logits: {same_merged}")
    if not (same and same_merged):
        raise SystemExit("quickstart: outputs differ after reload/merge")


if __name__ == "__main__":
    main()
