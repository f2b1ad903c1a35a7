// Greedy decoding of a GGUF file in real llama.cpp, through node-llama-cpp (its prebuilt binaries).
//
//     node bench/llamacpp_greedy.mjs REQUEST.json > RESULT.json
//
// Used by bench/llamacpp_check.py, which writes REQUEST.json:
//   {"gguf": PATH, "node_llama_cpp": DIR (holding node_modules/node-llama-cpp), "max_new_tokens": N,
//    "threads": T (llama.cpp threads, default 1), "prompts": [{"ids": [...], "messages": [{"role", "content"}, ...]}, ...]}
// and reads back, on stdout, one JSON object: what llama.cpp made of the file's metadata (EOS, EOT,
// end-of-generation tokens, the chat template) and, per prompt, the N greedy token ids from the
// given prompt ids, plus the prompt ids llama.cpp builds itself from the messages with the GGUF's
// own chat template (llama.cpp's Jinja engine) and tokenizer. Logs go to stderr.

import {readFileSync} from "node:fs";
import {createRequire} from "node:module";
import {join} from "node:path";
import {pathToFileURL} from "node:url";

/** node-llama-cpp from the scratch folder it was installed in (kept out of the repository). */
async function importNodeLlamaCpp(dir) {
    const resolved = createRequire(join(dir, "package.json")).resolve("node-llama-cpp");
    return import(pathToFileURL(resolved).href);
}

/** N greedy tokens after `ids` on a fresh sequence; end-of-generation tokens do not stop it, so the
 * whole run compares token by token with transformers (the caller sees where EOG came). */
async function greedy(context, ids, maxNewTokens) {
    const sequence = context.getSequence();
    try {
        const out = [];
        for await (const token of sequence.evaluate(ids, {temperature: 0, yieldEogToken: true})) {
            out.push(token);
            if (out.length >= maxNewTokens) break;
        }
        return out;
    } finally {
        sequence.dispose();
    }
}

/** The chat history node-llama-cpp's chat wrappers take, ending with an empty model turn. */
function chatHistory(messages) {
    const history = messages.map((m) => m.role === "assistant" ? {type: "model", response: [m.content]}
        : {type: m.role, text: m.content});
    return [...history, {type: "model", response: []}];
}

/** Prompt ids as llama.cpp builds them: the GGUF's chat template rendered by llama.cpp's Jinja
 * engine (JinjaTemplateChatWrapper), tokenized by the GGUF's tokenizer; or the error text. */
function templatePromptIds(lib, model, template, messages) {
    try {
        const wrapper = new lib.JinjaTemplateChatWrapper({template, tokenizer: model.tokenizer, trimLeadingWhitespaceInResponses: false});
        const {contextText} = wrapper.generateContextState({chatHistory: chatHistory(messages)});
        return {ids: contextText.tokenize(model.tokenizer)};
    } catch (error) {
        return {error: String(error?.message ?? error)};
    }
}

/** What llama.cpp read from the file: special tokens (native vocab), the template (GGUF metadata). */
function metadataReport(lib, model) {
    const tokenizerMeta = model.fileInfo.metadata?.tokenizer ?? {};
    let wrapper = null;
    try {
        wrapper = lib.resolveChatWrapper(model)?.wrapperName ?? null;
    } catch (error) {
        wrapper = `error: ${error?.message ?? error}`;
    }
    const eog = [...model.iterateAllTokens()].filter((t) => model.isEogToken(t));
    return {
        architecture: model.architecture, vocabulary_type: model.vocabularyType, train_context: model.trainContextSize,
        bos: model.tokens.bos, eos: model.tokens.eos, eot: model.tokens.eot,
        eos_string: model.tokens.eosString, eot_string: model.tokens.eotString, eog_tokens: eog,
        add_bos: model.tokens.shouldPrependBosToken,
        chat_template: tokenizerMeta.chat_template ?? null, chat_wrapper: wrapper, warnings: model.getWarnings(),
    };
}

/** One line on stderr with the seconds since the start: which step is slow. */
const started = Date.now();
function stage(name) {
    process.stderr.write(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${name}\n`);
}

async function main() {
    const request = JSON.parse(readFileSync(process.argv[2], "utf8"));
    const lib = await importNodeLlamaCpp(request.node_llama_cpp);
    const llama = await lib.getLlama({gpu: false, build: "never", logLevel: lib.LlamaLogLevel.warn,
        logger: (level, message) => process.stderr.write(`[llama.cpp ${level}] ${message}`)});
    stage("llama.cpp bindings loaded");
    const model = await llama.loadModel({modelPath: request.gguf});
    stage("model loaded");
    const longest = Math.max(...request.prompts.map((p) => p.ids.length));
    const context = await model.createContext({contextSize: longest + request.max_new_tokens + 16, sequences: 1, seed: 0,
        threads: request.threads ?? 1});
    stage("context created");
    const meta = metadataReport(lib, model);
    stage("metadata read");
    const results = [];
    for (const prompt of request.prompts) {
        const rendered = meta.chat_template ? templatePromptIds(lib, model, meta.chat_template, prompt.messages) : {error: "no chat template"};
        stage("prompt rendered with the GGUF template");
        const tokens = await greedy(context, prompt.ids, request.max_new_tokens);
        stage(`${tokens.length} tokens decoded`);
        const end = tokens.findIndex((t) => model.isEogToken(t));
        results.push({tokens, text: model.detokenize(end < 0 ? tokens : tokens.slice(0, end)),
            template_ids: rendered.ids ?? null, template_error: rendered.error ?? null,
            prompt_ids_tokenized: model.tokenize(model.detokenize(prompt.ids, true), true)});
    }
    await context.dispose();
    await model.dispose();
    process.stdout.write(JSON.stringify({llama_cpp: meta, results}) + "\n");
}

main().catch((error) => {
    process.stderr.write(`llamacpp_greedy.mjs: ${error?.stack ?? error}\n`);
    process.exit(1);
});
