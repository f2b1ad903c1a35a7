"""`tunelab export RUN DIR`: a trained model as a standalone folder, with a model card (README.md).

    tunelab export runs/docqa-ko exported/docqa-ko                # HF folder, fp32
    tunelab export runs/docqa-ko exported/docqa-ko-bf16 --dtype bf16
    tunelab export runs/docqa-ko exported/docqa-ko-gguf --gguf q8_0   # SFT: llama.cpp / Ollama
    python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('exported/docqa-ko')"

SFT runs: LoRA already merged into the base, the run's template as the tokenizer's chat template
(every answer ends with the stop token the model was trained to emit), model_max_length the run's
max length, decoding settings in generation_config.json; the PEFT adapter (LoRA runs) in
DIR/adapter. `--gguf f16|q8_0` writes one GGUF file (Llama, Qwen2, Gemma 3) and an Ollama
Modelfile instead. Classification runs: the model folder as trained: a transformers
`*ForSequenceClassification` checkpoint where a stock class computes the run's classifier, else a
folder that only tunelab loads (transformers refuses it); the line printed says which, and why.
DIR may also be given as `--out DIR`.
"""

HELP = "write a run's model as a Hugging Face folder (--dtype fp32|bf16) or, for SFT runs, a GGUF + Ollama Modelfile (--gguf f16|q8_0)"


def configure(p):
    p.add_argument("run", help="run folder")
    p.add_argument("dir", nargs="?", help="folder to write (must be empty or absent unless --force)")
    p.add_argument("--out", help="the same as DIR")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="precision of the weights (bf16: half the size)")
    p.add_argument("--gguf", choices=("f16", "q8_0"), help="SFT runs: one GGUF file of this type plus an Ollama Modelfile")
    p.add_argument("--force", action="store_true", help="replace an existing folder")


def run(args) -> int:
    import json

    from tunelab.errors import TunelabError
    from tunelab.sft.export import export_run

    if (args.dir is None) == (args.out is None):
        raise TunelabError("export: give the folder to write once, as DIR or as --out DIR")
    out = export_run(args.run, args.dir or args.out, force=args.force, dtype=args.dtype, gguf=args.gguf)
    meta = json.loads((out / "tunelab.json").read_text(encoding="utf-8"))
    reason = meta.get("export_reason")  # classification folders written since format 2
    if meta.get("export_format") == "gguf":
        print(f"wrote {out}: {meta['gguf']} loads in llama.cpp (chat template inside); "
              f"ollama create NAME -f {out / 'Modelfile'}; model card in README.md")
        return 0
    if meta.get("task") == "sft":
        loads = "transformers AutoModelForCausalLM (chat template inside)"
    elif meta.get("hf_compatible"):
        loads = "transformers AutoModelForSequenceClassification" + (f": {reason}" if reason else f" ({meta.get('hf_class')})")
    elif reason:
        loads = f"tunelab.load or tunelab predict only; stock transformers refuses it: {reason}"
    else:
        loads = "tunelab.load (this classifier's pooling/mask are not a stock transformers class)"
    adapter = "; PEFT adapter in adapter/" if (out / "adapter" / "adapter_config.json").is_file() else ""
    print(f"wrote {out} ({args.dtype}): loads with {loads}{adapter}")
    return 0
