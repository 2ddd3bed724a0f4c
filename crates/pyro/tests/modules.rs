//! Keeps the library's inner shape true (ARCHITECTURE.md): its modules
//! import each other without cycles, nothing below the façade imports
//! `lib.rs`, and no source file grows past 600 lines.
//!
//! The graph is read from the sources: every `use crate::...`, inline
//! `crate::...`, `super::...` and child-module path, with re-exports
//! followed to the module that defines the name. A module's `pub use` is
//! its face, not a dependency, unless the module uses the name itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

struct Graph {
    /// module path (`workspace::lifecycle`; `` for lib.rs) → its file
    files: BTreeMap<String, PathBuf>,
    edges: BTreeMap<String, BTreeSet<String>>,
}

fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts.join("::")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Code without comments, string literals and `#[cfg(test)]` modules.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut skip_until: Option<usize> = None;
    let mut depth = 0usize;
    let mut pending_test = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        if trimmed.starts_with("#[cfg(test)]") {
            pending_test = true;
            continue;
        }
        if pending_test && trimmed.starts_with("mod ") && skip_until.is_none() {
            skip_until = Some(depth);
        }
        pending_test = false;
        depth += line.matches('{').count();
        depth = depth.saturating_sub(line.matches('}').count());
        if let Some(d) = skip_until {
            if depth <= d && line.contains('}') {
                skip_until = None;
            }
            continue;
        }
        let mut in_str = false;
        let mut prev = ' ';
        for c in line.chars() {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}::{b}"),
    }
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim().trim_end_matches("::");
        let body = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let full = join(prefix, head);
        let (mut level, mut start) = (0, 0);
        for (i, c) in body.char_indices() {
            match c {
                '{' => level += 1,
                '}' => level -= 1,
                ',' if level == 0 => {
                    expand(&full, &body[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&full, &body[start..], out);
    } else if !tree.is_empty() {
        out.push(join(prefix, tree.split(" as ").next().unwrap().trim()));
    }
}

/// How often `name` occurs in `code` as a whole word.
fn words(code: &str, name: &str) -> usize {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    code.match_indices(name)
        .filter(|(i, _)| !code[..*i].ends_with(ident) && !code[i + name.len()..].starts_with(ident))
        .count()
}

/// The `use` statements of a file: (is a `pub use`, the paths it names).
fn uses(code: &str) -> Vec<(bool, Vec<String>)> {
    let mut out = Vec::new();
    for stmt in code.split(';') {
        let s = stmt.trim();
        let (is_pub, rest) = if let Some(r) = s.strip_prefix("use ") {
            (false, r)
        } else if let Some(r) = s
            .strip_prefix("pub use ")
            .or_else(|| s.strip_prefix("pub(crate) use "))
        {
            (true, r)
        } else {
            // A statement may follow other code on earlier lines.
            match s.rfind("\nuse ").or_else(|| s.rfind("\npub use ")) {
                Some(i) => {
                    let tail = s[i + 1..].trim();
                    match tail.strip_prefix("use ") {
                        Some(r) => (false, r),
                        None => (true, tail.trim_start_matches("pub use ")),
                    }
                }
                None => continue,
            }
        };
        let mut paths = Vec::new();
        expand("", &rest.replace('\n', " "), &mut paths);
        out.push((is_pub, paths));
    }
    out
}

/// The code with its `use` statements taken out.
fn without_uses(code: &str) -> String {
    code.split_inclusive(';')
        .map(|stmt| {
            let start = stmt.match_indices("use ").map(|(i, _)| i).find(|&i| {
                let lead = stmt[..i].rsplit('\n').next().unwrap_or("").trim();
                lead.is_empty() || lead == "pub" || lead == "pub(crate)"
            });
            match start {
                Some(i) => {
                    let line = stmt[..i].rfind('\n').map(|n| n + 1).unwrap_or(0);
                    &stmt[..line]
                }
                None => stmt,
            }
        })
        .collect()
}

/// Every `crate::x::y` path written inline (use groups are expanded with
/// their statement instead).
fn inline_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let tail: String = code[i + 7..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        if code[i + 7 + tail.len()..].starts_with('{') {
            continue;
        }
        out.push(format!("crate::{}", tail.trim_end_matches(':')));
    }
    out
}

fn defines(code: &str, name: &str) -> bool {
    code.lines().any(|l| {
        let l = l.trim_start();
        let l = ["pub(crate) ", "pub(super) ", "pub "]
            .iter()
            .find_map(|v| l.strip_prefix(v))
            .unwrap_or(l);
        [
            "struct ", "enum ", "fn ", "const ", "static ", "trait ", "type ",
        ]
        .iter()
        .any(|k| {
            l.strip_prefix(k).is_some_and(|r| {
                r.starts_with(name)
                    && !r[name.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
            })
        })
    })
}

/// A path as seen from module `m`, made absolute (without `crate::`).
fn absolute(m: &str, p: &str) -> String {
    if let Some(rest) = p.strip_prefix("crate::") {
        return rest.to_string();
    }
    let mut base: Vec<&str> = if m.is_empty() {
        vec![]
    } else {
        m.split("::").collect()
    };
    let mut rest = p;
    loop {
        if let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        } else if let Some(r) = rest.strip_prefix("self::") {
            rest = r;
        } else {
            break;
        }
    }
    join(&base.join("::"), rest)
}

fn graph(src: &Path) -> Graph {
    let mut paths = Vec::new();
    walk(src, &mut paths);
    let mut files = BTreeMap::new();
    let mut codes = BTreeMap::new();
    for p in &paths {
        let m = module_of(src, p);
        codes.insert(m.clone(), code(&std::fs::read_to_string(p).unwrap()));
        files.insert(m, p.clone());
    }
    let is_module = |m: &str| codes.contains_key(m);
    // A path as written in module `m`, made absolute; `None` for other
    // crates' paths.
    let absolute_in = |m: &str, r: &str| -> Option<String> {
        if r.starts_with("crate") || r.starts_with("super::") || r.starts_with("self::") {
            return Some(absolute(m, r));
        }
        // `use child::X` inside a module is relative to it.
        let first = r.split("::").next().unwrap_or("");
        is_module(&join(m, first)).then(|| join(m, r))
    };
    // Re-exports: (module, name) → the absolute path it names.
    let mut reexports: BTreeMap<(String, String), String> = BTreeMap::new();
    for (m, c) in &codes {
        for (is_pub, ps) in uses(c) {
            for p in ps.iter().filter(|_| is_pub) {
                let name = p.rsplit("::").next().unwrap().to_string();
                if let Some(abs) = absolute_in(m, p) {
                    reexports.insert((m.clone(), name), abs);
                }
            }
        }
    }
    // The module that defines what an absolute path names.
    let resolve = |path: &str| -> String {
        let mut path = path.to_string();
        loop {
            let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            let mut module = String::new();
            let mut i = 0;
            while i < segs.len() && is_module(&join(&module, segs[i])) {
                module = join(&module, segs[i]);
                i += 1;
            }
            let Some(item) = segs.get(i) else {
                return module;
            };
            if defines(&codes[&module], item) {
                return module;
            }
            match reexports.get(&(module.clone(), item.to_string())) {
                Some(target) if *target != path => path = join(target, &segs[i + 1..].join("::")),
                _ => return module,
            }
        }
    };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, c) in &codes {
        let mut refs = Vec::new();
        for (is_pub, ps) in uses(c) {
            for p in ps {
                let name = p.rsplit("::").next().unwrap_or("");
                // A re-export is a dependency only if the module uses it.
                if is_pub && words(c, name) < 2 {
                    continue;
                }
                refs.push(p);
            }
        }
        // Paths written in the code itself (not in `use` statements).
        let c = &without_uses(c);
        refs.extend(inline_paths(c));
        // `child::item` written in a module's own code.
        for child in codes.keys() {
            let Some(leaf) = child
                .strip_prefix(&if m.is_empty() {
                    String::new()
                } else {
                    format!("{m}::")
                })
                .filter(|rest| !rest.is_empty() && !rest.contains("::"))
            else {
                continue;
            };
            let pattern = format!("{leaf}::");
            for (i, _) in c.match_indices(&pattern) {
                let before = c[..i].chars().next_back().unwrap_or(' ');
                if before.is_alphanumeric() || before == '_' || before == ':' {
                    continue;
                }
                let tail: String = c[i..]
                    .chars()
                    .take_while(|ch| ch.is_alphanumeric() || *ch == '_' || *ch == ':')
                    .collect();
                refs.push(format!("self::{}", tail.trim_end_matches(':')));
            }
        }
        for r in refs {
            if let Some(abs) = absolute_in(m, &r) {
                let target = resolve(&abs);
                if &target != m {
                    edges.entry(m.clone()).or_default().insert(target);
                }
            }
        }
    }
    Graph { files, edges }
}

/// The members of every cycle (Tarjan's strongly connected components).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct Walk<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a str) {
        let n = w.index.len();
        w.index.insert(v, n);
        w.low.insert(v, n);
        w.stack.push(v);
        w.on_stack.insert(v);
        for t in w.g.edges.get(v).into_iter().flatten() {
            let t = t.as_str();
            if !w.index.contains_key(t) {
                visit(w, t);
                let low = w.low[v].min(w.low[t]);
                w.low.insert(v, low);
            } else if w.on_stack.contains(t) {
                let low = w.low[v].min(w.index[t]);
                w.low.insert(v, low);
            }
        }
        if w.low[v] == w.index[v] {
            let mut comp = Vec::new();
            while let Some(t) = w.stack.pop() {
                w.on_stack.remove(t);
                comp.push(t.to_string());
                if t == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                w.out.push(comp);
            }
        }
    }
    let mut w = Walk {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.files.keys() {
        if !w.index.contains_key(v.as_str()) {
            visit(&mut w, v);
        }
    }
    w.out
}

fn library() -> Graph {
    graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn the_library_modules_import_without_cycles() {
    let g = library();
    // The graph is really read: these arrows exist.
    for (from, to) in [
        ("", "workspace::lifecycle"),
        ("doctor", "vmm::qemu"),
        ("workspace::lifecycle", "vmm::launch"),
        ("vmm::launch", "vmm::client"),
        ("vmm::client", "vmm::control"),
        ("vmm::supervisor", "vmm::boot"),
        ("vmm::supervisor", "vmm::supervisor::ports"),
        ("workspace::services", "workspace"),
        ("workspace", "workspace::state"),
    ] {
        assert!(
            g.edges.get(from).is_some_and(|e| e.contains(to)),
            "expected {from:?} -> {to:?}; edges of {from:?}: {:?}",
            g.edges.get(from)
        );
    }
    let cycles = cycles(&g);
    assert!(cycles.is_empty(), "import cycles: {cycles:?}");
}

#[test]
fn a_cycle_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("lib.rs", "mod a;\nmod b;\npub use a::A;\n");
    write("a.rs", "use crate::b::B;\npub struct A(B);\n");
    write("b/mod.rs", "mod c;\npub struct B(c::C);\n");
    // Through a re-export: a -> b (B), b::c -> a (A, re-exported by lib).
    write("b/c.rs", "pub struct C(crate::A);\n");
    let g = graph(dir.path());
    assert_eq!(cycles(&g), vec![vec!["a", "b", "b::c"]], "{:?}", g.edges);
}

#[test]
fn nothing_below_the_facade_imports_it() {
    let g = library();
    for (from, to) in &g.edges {
        assert!(
            from.is_empty() || !to.contains(""),
            "{from} imports from lib.rs (the façade); import from the defining module"
        );
    }
}

#[test]
fn library_files_stay_small() {
    let g = library();
    for (m, file) in &g.files {
        let lines = std::fs::read_to_string(file).unwrap().lines().count();
        assert!(lines <= 600, "{m:?} ({}) has {lines} lines", file.display());
    }
}
