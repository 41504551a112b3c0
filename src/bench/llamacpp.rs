//! The llama.cpp side of `s3mem bench scan --llamacpp PYTHON`: a full-context prefill of the
//! same text with the same GGUF file, in a child Python process (llama-cpp-python) so that its
//! peak RSS is its own.

use std::path::Path;
use std::process::Command;

use super::{BenchError, Result};

/// Run as `PYTHON -c SCRIPT MODEL TEXT_FILE TOKENS THREADS`; prints one JSON object.
///
/// The text is tokenized with llama.cpp's own tokenizer and cut to `TOKENS`; `llm.eval` then
/// prefills them in batches of 512 with the KV cache (logits of each batch's last token only,
/// as `logits_all=False` asks), which is what the timer measures.
///
/// The weights stay in llama.cpp's plain CPU buffers (`use_extra_bufts = False`, which
/// `Llama()` does not expose, hence the patched defaults): on a CPU with AMX the extra AMX
/// buffer type takes Q4_1 matmuls and segfaults in `ggml_backend_amx_mul_mat`
/// (ggml-org/llama.cpp#20824; #16315 reports wrong Q4_0/Q4_1 results there). This also turns
/// off the repacked (interleaved) kernels, which serve Q4_0, Q4_K and IQ4_NL, not Q4_1.
const SCRIPT: &str = r#"
import json, resource, sys, time
import llama_cpp
import llama_cpp.llama_cpp as C

_defaults = C.llama_model_default_params
def _plain_buffers():
    p = _defaults()
    p.use_extra_bufts = False
    return p
C.llama_model_default_params = _plain_buffers

model, text_file, n, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with open(text_file, encoding="utf-8") as f:
    text = f.read()
n_ctx = n + 16
llm = llama_cpp.Llama(
    model_path=model,
    n_ctx=n_ctx,
    n_threads=threads,
    n_threads_batch=threads,
    n_batch=512,
    n_ubatch=512,
    verbose=False,
    logits_all=False,
)
tokens = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)[:n]
t0 = time.perf_counter()
llm.eval(tokens)
seconds = time.perf_counter() - t0
info = llama_cpp.llama_print_system_info()
if isinstance(info, bytes):
    info = info.decode("utf-8", "replace")
print(json.dumps({
    "tokens": len(tokens),
    "seconds": seconds,
    "tokens_per_s": len(tokens) / seconds,
    "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "n_ctx": n_ctx,
    "n_ctx_train": llm._model.n_ctx_train(),
    "n_threads": threads,
    "n_batch": 512,
    "n_ubatch": 512,
    "use_extra_bufts": False,
    "version": getattr(llama_cpp, "__version__", "unknown"),
    "system_info": info.strip(),
}))
"#;

/// Prefills the first `tokens` tokens of `text_file` with llama.cpp on `threads` threads and
/// returns the script's JSON (tokens, seconds, tokens_per_s, peak_rss_bytes, ...).
pub fn prefill(
    python: &Path,
    model: &Path,
    text_file: &Path,
    tokens: usize,
    threads: usize,
) -> Result<serde_json::Value> {
    let fail = |detail: String| BenchError::Child {
        what: "llama.cpp prefill".into(),
        detail,
    };
    let out = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(model)
        .arg(text_file)
        .arg(tokens.to_string())
        .arg(threads.to_string())
        // ggml's CPU backend takes n_threads; OpenMP builds also read this.
        .env("OMP_NUM_THREADS", threads.to_string())
        .output()
        .map_err(|e| fail(format!("running {}: {e}", python.display())))?;
    if !out.status.success() {
        return Err(fail(format!(
            "({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| fail(format!("no JSON from the llama.cpp script: {text}")))?;
    serde_json::from_str(line).map_err(|e| fail(format!("its JSON: {e}")))
}
