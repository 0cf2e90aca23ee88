// llama.cpp baseline (node-llama-cpp's prebuilt CPU binaries) for the engine's CPU benchmark:
// the same measurements as `engine-bench`, printed as the same JSON lines.
//
// Usage: node bench.mjs --model FILE [--threads N] [--prompt 512] [--generate 128]
//                       [--batch-prompt 64] [--batch 8,32] [--repeat 3] [--only prefill,decode,aggregate]
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

function parseArgs(argv) {
    const args = {
        model: process.env.OPENLEDGER_MODEL, threads: 2, prompt: 512, generate: 128,
        batchPrompt: 64, batch: [8, 32], repeat: 3, only: ["prefill", "decode", "aggregate"],
    };
    for (let i = 0; i < argv.length; i += 2) {
        const [key, value] = [argv[i], argv[i + 1]];
        if (value === undefined) throw new Error(`${key} needs a value`);
        switch (key) {
            case "--model": args.model = value; break;
            case "--threads": args.threads = Number(value); break;
            case "--prompt": args.prompt = Number(value); break;
            case "--generate": args.generate = Number(value); break;
            case "--batch-prompt": args.batchPrompt = Number(value); break;
            case "--batch": args.batch = value.split(",").map(Number); break;
            case "--repeat": args.repeat = Number(value); break;
            case "--only": args.only = value.split(","); break;
            default: throw new Error(`unknown option ${key}`);
        }
    }
    if (!args.model) throw new Error("--model (or OPENLEDGER_MODEL) is required");
    return args;
}

const args = parseArgs(process.argv.slice(2));
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const report = (measure, sequences, prompt, runs) =>
    console.log(JSON.stringify({
        engine: "llama.cpp", measure, sequences, adapters: false, prompt,
        tok_per_s: Number(median(runs).toFixed(1)), runs, threads: args.threads,
    }));

// Seeded prompt tokens (ids >= 100, as engine-bench draws them).
let seed = 42;
const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);

const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath: args.model, gpuLayers: 0 });
const vocab = model.tokens.trimmedVocabularySize ?? 49152;
const prompt = (n) => Array.from({ length: n }, () => 100 + Math.floor(random() * (vocab - 100)));

/// Runs `seqs` prompts at once on a fresh context; returns decode tok/s (tokens after each
/// sequence's first, over the time from the moment every sequence had its first token).
async function decodeRate(prompts, generate) {
    const context = await model.createContext({
        contextSize: prompts.length * (Math.max(...prompts.map((p) => p.length)) + generate + 16),
        sequences: prompts.length,
        threads: args.threads,
        batchSize: 512,
    });
    try {
        const counts = new Array(prompts.length).fill(0);
        let start = null;
        let base = 0;
        await Promise.all(prompts.map(async (p, i) => {
            const seq = context.getSequence();
            for await (const _token of seq.evaluate(p, { temperature: 0, yieldEogToken: true })) {
                counts[i] += 1;
                if (start === null && counts.every((c) => c >= 1)) {
                    start = performance.now();
                    base = counts.reduce((a, b) => a + b, 0);
                }
                if (counts[i] >= generate) break;
            }
        }));
        const secs = (performance.now() - start) / 1000;
        const total = counts.reduce((a, b) => a + b, 0);
        if (total !== prompts.length * generate) throw new Error(`${total} tokens generated`);
        return (total - base) / secs;
    } finally {
        await context.dispose();
    }
}

const wants = (m) => args.only.includes(m);
if (wants("prefill")) {
    const p = prompt(args.prompt);
    const runs = [];
    for (let r = 0; r < args.repeat; r++) {
        const context = await model.createContext({
            contextSize: args.prompt + 16, sequences: 1, threads: args.threads, batchSize: args.prompt,
        });
        const seq = context.getSequence();
        const t = performance.now();
        await seq.evaluateWithoutGeneratingNewTokens(p);
        runs.push(args.prompt / ((performance.now() - t) / 1000));
        await context.dispose();
    }
    report("prefill", 1, args.prompt, runs);
}
if (wants("decode")) {
    const p = prompt(args.prompt);
    const runs = [];
    for (let r = 0; r < args.repeat; r++) runs.push(await decodeRate([p], args.generate));
    report("decode", 1, args.prompt, runs);
}
if (wants("aggregate")) {
    for (const n of args.batch) {
        const ps = Array.from({ length: n }, () => prompt(args.batchPrompt));
        const runs = [];
        for (let r = 0; r < args.repeat; r++) runs.push(await decodeRate(ps, args.generate));
        report("aggregate", n, args.batchPrompt, runs);
    }
}
const rss = (await import("node:fs")).readFileSync("/proc/self/status", "utf8")
    .split("\n").find((l) => l.startsWith("VmHWM:"));
console.log(JSON.stringify({ engine: "llama.cpp", peak_rss_mib: Number(rss.split(/\s+/)[1]) / 1024, threads: args.threads }));
await model.dispose();
await llama.dispose();
