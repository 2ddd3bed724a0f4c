//! How long-running work reports what it is doing. The CLI prints these on
//! stderr; the MCP server and quiet SDK callers ignore them.

pub trait Progress: Sync {
    /// A step began: `area` is the operation (`run`, `pull`, `kernel`),
    /// `detail` a short `key=value` description.
    fn phase(&self, area: &str, detail: &str);
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {
    fn phase(&self, _area: &str, _detail: &str) {}
}
