//! `pyro demo ollama`: a model chooses commands and pyro runs each in a
//! fresh microVM. The model is served by Ollama (or anything that speaks
//! the OpenAI chat-completions API with tool calls); the loop is the
//! smallest honest agent: ask, run the tool calls it asks for, give the
//! results back, until it answers in words.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use pyro::{defaults, Discard, Pyro, RunParams};
use serde_json::{json, Value};

use crate::render;

/// At most this many model turns: a model that keeps calling tools is
/// stopped rather than looped forever.
const MAX_TURNS: usize = 6;

#[derive(Args)]
pub struct OllamaArgs {
    /// The OpenAI-compatible API of the model server (default: OLLAMA_HOST's
    /// /v1, else http://localhost:11434/v1).
    #[arg(long)]
    base_url: Option<String>,
    /// The model to ask.
    #[arg(long, default_value = "llama3.2:3b")]
    model: String,
    /// Print each model turn and tool call on stderr.
    #[arg(short, long)]
    verbose: bool,
}

/// `OLLAMA_HOST` as Ollama reads it (`HOST:PORT` or a URL), with `/v1`.
fn base_url(given: Option<String>) -> String {
    if let Some(url) = given {
        return url.trim_end_matches('/').to_string();
    }
    match std::env::var("OLLAMA_HOST") {
        Ok(h) if !h.trim().is_empty() => {
            let h = h.trim().trim_end_matches('/');
            let url = if h.contains("://") {
                h.to_string()
            } else {
                format!("http://{h}")
            };
            format!("{url}/v1")
        }
        _ => "http://localhost:11434/v1".into(),
    }
}

fn vm_run_tool() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": "vm_run",
            "description": "Run one shell command in a fresh, isolated Debian 12 microVM (git and coreutils are installed; no network) and return its exit code, stdout and stderr.",
            "parameters": {
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The shell command, run with /bin/sh -lc."}
                },
                "required": ["command"]
            }
        }
    })
}

pub fn run(pyro: &Pyro, a: OllamaArgs) -> anyhow::Result<ExitCode> {
    let url = format!("{}/chat/completions", base_url(a.base_url));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(300)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut messages = vec![
        json!({"role": "system", "content": "You answer questions about a Linux sandbox by calling the vm_run tool, then reply briefly with what it showed."}),
        json!({"role": "user", "content": "Which version of git is installed in the sandbox? Run a command to find out."}),
    ];
    let mut calls = Vec::new();
    for _ in 0..MAX_TURNS {
        let request = json!({
            "model": a.model,
            "messages": messages,
            "tools": [vm_run_tool()],
            "stream": false,
        });
        let mut response = agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(serde_json::to_string(&request)?)
            .map_err(|e| anyhow::anyhow!("the model server at {url} did not answer: {e}; start Ollama (`ollama serve`, then `ollama pull {}`) or pass --base-url", a.model))?;
        let status = response.status();
        let body = response.body_mut().read_to_string()?;
        if !status.is_success() {
            anyhow::bail!(
                "the model server at {url} answered {status}: {}",
                body.trim()
            );
        }
        let reply: Value = serde_json::from_str(&body)
            .map_err(|e| anyhow::anyhow!("the model server at {url} sent no JSON ({e})"))?;
        let message = reply["choices"][0]["message"].clone();
        if !message.is_object() {
            anyhow::bail!("the model server at {url} sent no message: {body}");
        }
        let tool_calls = message["tool_calls"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        messages.push(message.clone());
        if tool_calls.is_empty() {
            let answer = message["content"].as_str().unwrap_or_default().to_string();
            if a.verbose {
                eprintln!("[ollama] answer: {answer}");
            }
            render::json(&json!({
                "model": a.model,
                "base_url": url.trim_end_matches("/chat/completions"),
                "tool_calls": calls,
                "answer": answer,
            }))?;
            return Ok(ExitCode::SUCCESS);
        }
        for call in tool_calls {
            let name = call["function"]["name"].as_str().unwrap_or_default();
            let id = call["id"].as_str().unwrap_or_default().to_string();
            // Arguments are a JSON string in the API; some servers send an object.
            let args = match &call["function"]["arguments"] {
                Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
                other => other.clone(),
            };
            let result = match (name, args["command"].as_str()) {
                ("vm_run", Some(command)) => {
                    if a.verbose {
                        eprintln!("[ollama] vm_run: {command}");
                    }
                    let params =
                        RunParams::new(defaults::environment(), pyro::Command::shell(command));
                    match pyro.run_in_vm(&params, &render::Phases::new(), &mut Discard) {
                        Ok(r) => {
                            json!({"exit_code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr})
                        }
                        Err(e) => json!({"error": e.to_string()}),
                    }
                }
                ("vm_run", None) => json!({"error": "vm_run needs a string argument `command`"}),
                _ => json!({"error": format!("no tool {name:?}; the only tool is vm_run")}),
            };
            calls.push(json!({"name": name, "arguments": args, "result": result}));
            messages.push(json!({
                "role": "tool",
                "tool_call_id": id,
                "content": serde_json::to_string(&result)?,
            }));
        }
    }
    anyhow::bail!("the model kept calling tools for {MAX_TURNS} turns without answering")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_url_follows_ollama_host() {
        assert_eq!(base_url(Some("http://h:1/v1/".into())), "http://h:1/v1");
        std::env::set_var("OLLAMA_HOST", "10.1.2.3:8080");
        assert_eq!(base_url(None), "http://10.1.2.3:8080/v1");
        std::env::set_var("OLLAMA_HOST", "https://models.example/");
        assert_eq!(base_url(None), "https://models.example/v1");
        std::env::remove_var("OLLAMA_HOST");
        assert_eq!(base_url(None), "http://localhost:11434/v1");
    }
}
