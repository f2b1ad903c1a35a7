"""`tunelab export RUN --out DIR`: a trained model as a standalone Hugging Face folder.

    tunelab export runs/docqa-ko --out exported/docqa-ko
    python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('exported/docqa-ko')"

SFT runs: LoRA already merged into the full-precision base, the run's template as the
tokenizer's chat template, decoding settings in generation_config.json; the PEFT adapter (LoRA
runs) in DIR/adapter. Classification runs: the model folder as trained: a transformers
`*ForSequenceClassification` checkpoint where a stock class computes the run's classifier, else a
folder that only tunelab loads (transformers refuses it); the line printed says which, and why.
"""

HELP = "copy a run's model out as a Hugging Face folder (SFT: merged LoRA + chat template; adapter in DIR/adapter)"


def configure(p):
    p.add_argument("run", help="run folder")
    p.add_argument("--out", required=True, help="folder to write (must be empty or absent unless --force)")
    p.add_argument("--force", action="store_true", help="replace an existing folder")


def run(args) -> int:
    import json

    from tunelab.sft.export import export_run

    out = export_run(args.run, args.out, force=args.force)
    meta = json.loads((out / "tunelab.json").read_text(encoding="utf-8"))
    reason = meta.get("export_reason")  # classification folders written since format 2
    if meta.get("task") == "sft":
        loads = "transformers AutoModelForCausalLM (chat template inside)"
    elif meta.get("hf_compatible"):
        loads = "transformers AutoModelForSequenceClassification" + (f": {reason}" if reason else f" ({meta.get('hf_class')})")
    elif reason:
        loads = f"tunelab.load or tunelab predict only; stock transformers refuses it: {reason}"
    else:
        loads = "tunelab.load (this classifier's pooling/mask are not a stock transformers class)"
    print(f"wrote {out}: loads with {loads}" + ("; PEFT adapter in adapter/" if (out / "adapter" / "adapter_config.json").is_file() else ""))
    return 0
