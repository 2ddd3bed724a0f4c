//! The MCP server over the `pyro` façade. Not served yet: the tools land
//! with the workspace surface (see ARCHITECTURE.md).
