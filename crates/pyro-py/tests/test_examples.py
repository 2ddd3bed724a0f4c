"""The examples, run as users run them. Models are scripted (LangChain's
fake chat model; small HTTP servers on loopback that speak the OpenAI
Responses and chat-completions APIs); pyro underneath is real."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

from conftest import EXAMPLES

Script = Callable[[Dict[str, Any]], Dict[str, Any]]


class ScriptedModel:
    """An HTTP server on 127.0.0.1 whose POST answers come from `script`."""

    def __init__(self, script: Script) -> None:
        self.requests: List[Dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                body["_path"] = self.path
                outer.requests.append(body)
                reply = json.dumps(script(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted() -> Iterator[Callable[[Script], ScriptedModel]]:
    servers: List[ScriptedModel] = []

    def start(script: Script) -> ScriptedModel:
        servers.append(ScriptedModel(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def run_example(name: str, env: Dict[str, str], *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, str(EXAMPLES / name), *args], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{name}: {out.stdout}\n{out.stderr}"
    return out


def test_python_examples(child_env: Dict[str, str]) -> None:
    out = run_example("python_run.py", child_env)
    assert out.stdout.startswith("git version 2.") and "exit_code=0" in out.stdout
    out = run_example("python_lifecycle.py", child_env)
    assert "state=created" in out.stdout and "Linux" in out.stdout and "deleted=True" in out.stdout
    out = run_example("python_workspace.py", child_env)
    assert "before: 1" in out.stdout and "after: 0 fixed" in out.stdout
    assert "after reset: broken" in out.stdout and "exported: fixed" in out.stdout
    out = run_example("agent_vm_run.py", child_env, "git --version", "echo $((6 * 7))")
    results = json.loads(out.stdout)
    assert results[0]["stdout"].startswith("git version") and results[1]["stdout"] == "42\n"


def test_langchain_tool_call(child_env: Dict[str, str]) -> None:
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    sys.path.insert(0, str(EXAMPLES))
    try:
        import langchain_vm_run as example
    finally:
        sys.path.remove(str(EXAMPLES))

    class ToolCallingFake(GenericFakeChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> "ToolCallingFake":
            assert [t.name for t in tools] == ["vm_run"]
            return self

    model = ToolCallingFake(messages=iter([
        AIMessage("", tool_calls=[{"name": "vm_run", "args": {"command": "git --version"}, "id": "call_1"}]),
        AIMessage("done"),
    ]))
    assert example.run_agent(model, "which git?") == "done"
    # The tool really ran: its output is what the model was given.
    output = json.loads(example.vm_run.invoke({"command": "echo from-the-guest; uname -s"}))
    assert output == {"exit_code": 0, "stdout": "from-the-guest\nLinux\n", "stderr": ""}


def responses_reply(output: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {"id": "resp_1", "object": "response", "created_at": 0, "model": "scripted",
            "status": "completed", "output": output, "parallel_tool_calls": True,
            "tool_choice": "auto", "tools": []}


def call(name: str, args: Dict[str, Any], n: int) -> Dict[str, Any]:
    return {"type": "function_call", "id": f"fc_{n}", "call_id": f"call_{n}", "name": name,
            "arguments": json.dumps(args), "status": "completed"}


def text(t: str) -> Dict[str, Any]:
    return {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": t, "annotations": []}]}


def outputs(body: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [json.loads(i["output"]) for i in body["input"] if i.get("type") == "function_call_output"]


def test_openai_responses_vm_run(child_env: Dict[str, str], scripted: Any) -> None:
    def script(body: Dict[str, Any]) -> Dict[str, Any]:
        assert body["_path"] == "/v1/responses"
        done = outputs(body)
        if not done:
            assert body["tools"][0]["name"] == "vm_run"
            return responses_reply([call("vm_run", {"command": "git --version"}, 1)])
        return responses_reply([text("the sandbox has " + done[0]["stdout"].strip())])

    model = scripted(script)
    child_env.update(OPENAI_BASE_URL=model.url, OPENAI_API_KEY="test")
    out = run_example("openai_responses_vm_run.py", child_env, "scripted")
    assert out.stdout.startswith("the sandbox has git version 2."), out.stdout


def test_openai_responses_workspace_core(child_env: Dict[str, str], scripted: Any) -> None:
    def script(body: Dict[str, Any]) -> Dict[str, Any]:
        done = outputs(body)
        names = {t["name"] for t in body["tools"]}
        assert len(names) == 16 and "workspace_exec" in names, names
        if len(done) == 0:
            return responses_reply([call("workspace_create", {"environment": "debian:12"}, 1)])
        wid = done[0]["workspace_id"]
        if len(done) == 1:
            return responses_reply([call("workspace_exec", {"workspace_id": wid, "command": "git --version"}, 2)])
        if len(done) == 2:
            return responses_reply([call("workspace_delete", {"workspace_id": wid}, 3)])
        assert done[2]["deleted"] is True
        return responses_reply([text("git: " + done[1]["stdout"].strip())])

    model = scripted(script)
    pyro_bin = Path(sys.executable).parent / "pyro"
    child_env.update(OPENAI_BASE_URL=model.url, OPENAI_API_KEY="test", PYRO_COMMAND=str(pyro_bin))
    out = run_example("openai_responses_workspace_core.py", child_env, "scripted")
    assert out.stdout.startswith("git: git version 2."), out.stdout
    assert len(model.requests) == 4


def test_pyro_demo_ollama(child_env: Dict[str, str], scripted: Any) -> None:
    def script(body: Dict[str, Any]) -> Dict[str, Any]:
        assert body["_path"] == "/v1/chat/completions" and body["model"] == "llama3.2:3b"
        tool = [m for m in body["messages"] if m["role"] == "tool"]
        if not tool:
            message = {"role": "assistant", "content": "", "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": "vm_run", "arguments": json.dumps({"command": "git --version"})}}]}
        else:
            message = {"role": "assistant", "content": "it is " + json.loads(tool[0]["content"])["stdout"].strip()}
        return {"id": "c1", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}

    model = scripted(script)
    child_env["OLLAMA_HOST"] = model.url.removesuffix("/v1")
    pyro_bin = Path(sys.executable).parent / "pyro"
    out = subprocess.run([str(pyro_bin), "demo", "ollama", "-v"], env=child_env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["answer"].startswith("it is git version 2."), result
    assert result["tool_calls"][0]["result"]["exit_code"] == 0
    assert "vm_run: git --version" in out.stderr
    # Nothing listening: a clear error naming the server.
    child_env["OLLAMA_HOST"] = "127.0.0.1:9"
    out = subprocess.run([str(pyro_bin), "demo", "ollama"], env=child_env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "127.0.0.1:9" in out.stdout and "ollama serve" in out.stdout, out


def test_readme_python_snippets(child_env: Dict[str, str]) -> None:
    readme = (EXAMPLES.parent / "README.md").read_text()
    snippets = [block.split("```", 1)[0] for block in readme.split("```python\n")[1:]]
    # The Ray snippet needs a cluster: test_ray runs it on one.
    snippets = [code for code in snippets if "import ray" not in code]
    assert len(snippets) >= 2, "the README's Python quickstart is gone"
    outputs = []
    for code in snippets:
        out = subprocess.run([sys.executable, "-c", code], env=child_env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, f"{code}\n{out.stderr}"
        outputs.append(out.stdout)
    assert outputs[0].startswith("git version 2.")
    assert outputs[1].startswith("fixed\n") and outputs[1].endswith("broken\n"), outputs[1]
