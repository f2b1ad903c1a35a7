"""`tunelab chat RUN`: talk to a fine-tuned (SFT) run in the terminal, with its saved template.

    tunelab chat runs/alpaca-smollm2
    tunelab chat runs/docqa-ko --context @policy.txt      # document QA: questions about one text
    printf 'Hi\n/reset\nName a colour\n/exit\n' | tunelab chat runs/x   # works without a terminal

The conversation is kept (the earliest turns are dropped when the prompt would pass the run's
max_length); `/reset` starts over, `/exit` or end of input quits. Document-QA templates take one
question at a time about the --context text, so no history is kept for them.
"""

HELP = "interactive chat with a fine-tuned (SFT) run using its saved template (/reset, /exit)"


def configure(p):
    from tunelab.commands.options import add_decoding_options

    p.add_argument("run", help="SFT run folder (or its model/ folder, or an exported folder)")
    p.add_argument("--system", default=None, help="system message for the conversation")
    p.add_argument("--context", default=None, help="document-QA runs: the document (text, or @FILE)")
    add_decoding_options(p)


def fit_history(messages, template, tokenizer, budget: int) -> list[dict]:
    """Drop the earliest (user, assistant) turns until the prompt fits `budget` tokens."""
    from tunelab.sft.templates import conversation
    from tunelab.sft.tokenize import drop_early_turns, encode_prompt

    _, pairs = conversation(messages)
    keep = len(pairs)
    while keep > 1 and len(encode_prompt(messages, template, tokenizer)) > budget:
        keep -= 1
        messages = drop_early_turns(messages, keep)
    return messages


def run(args) -> int:
    import sys

    from tunelab.commands.options import decoding, read_context
    from tunelab.sft.evaluate import refusal_strings
    from tunelab.sft.export import load_sft
    from tunelab.sft.formats import row_to_messages
    from tunelab.sft.generate import generate

    context = read_context(args.context)
    lm = load_sft(args.run, args.device)
    gen = decoding(args, lm.meta)
    document_qa = bool(refusal_strings(lm.template))
    if document_qa and context is None:
        from tunelab.errors import TunelabError

        raise TunelabError(f"{args.run}: this run answers questions about a document; pass --context TEXT or --context @FILE")
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chat with {lm.folder} ({lm.meta.get('template')}); /reset clears the history, /exit quits", file=sys.stderr)
    head = [] if args.system is None else [{"role": "system", "content": args.system}]
    history: list[dict] = []
    budget = int(lm.meta.get("max_length", 1024))
    while True:
        if interactive:
            try:
                line = input("> ")
            except EOFError:
                break
        else:
            line = sys.stdin.readline()
            if not line:
                break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = []
            print("(history cleared)", flush=True)
            continue
        if document_qa:
            messages = row_to_messages({"question": text, "context": context}, "docqa", require_answer=False)
        else:
            messages = fit_history(head + history + [{"role": "user", "content": text}], lm.template, lm.tokenizer, budget)
        answer = generate(lm.model, lm.tokenizer, lm.template, [messages], max_new_tokens=gen["max_new_tokens"],
                          do_sample=gen["do_sample"], temperature=gen["temperature"], top_p=gen["top_p"],
                          seed=gen.get("seed"))[0]
        print(answer, flush=True)
        if not document_qa:
            history = messages[len(head):] + [{"role": "assistant", "content": answer}]
    return 0
