// The official TypeScript MCP client against `pyro mcp serve`: it compiles
// every tool's output schema (Ajv) and validates structured results with
// it. Prints a JSON report: warnings the SDK logged, tool count, the
// vm_run result.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const warnings = [];
for (const level of ["warn", "error", "log"]) {
  console[level] = (...args) => warnings.push(args.map(String).join(" "));
}
const [command, ...args] = process.argv.slice(2);
const transport = new StdioClientTransport({ command, args, env: process.env, stderr: "ignore" });
const client = new Client({ name: "pyro-test", version: "1.0.0" });
await client.connect(transport);
const { tools } = await client.listTools();
const run = await client.callTool({
  name: "vm_run",
  arguments: { environment: "debian:12", command: "git --version" },
});
const create = await client.callTool({ name: "workspace_create", arguments: { environment: "debian:12" } });
const id = create.structuredContent?.workspace_id;
const status = await client.callTool({ name: "workspace_status", arguments: { workspace_id: id } });
await client.callTool({ name: "workspace_delete", arguments: { workspace_id: id } });
await client.close();
process.stdout.write(JSON.stringify({
  warnings,
  tools: tools.length,
  run: run.structuredContent,
  status: status.structuredContent,
  errors: [run, create, status].filter((r) => r.isError).map((r) => r.content),
}) + "\n");
