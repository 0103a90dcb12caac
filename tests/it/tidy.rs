//! The written architecture, checked: the engine's modules form no import
//! cycle (ARCHITECTURE.md, "Dependency order"), `storage` imports nothing
//! from the rest of the crate, `bincode` lives only in the record format
//! and `backoff` only in the retry policy.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Engine modules by path (`actors::key`), with their source minus tests
/// and comments. The server is a client of the engine and left out.
fn engine_modules() -> BTreeMap<String, String> {
    modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

/// The server crate's modules, the same way.
fn server_modules() -> BTreeMap<String, String> {
    modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/datastorer-server/src"))
}

/// The modules of the crate whose sources are under `root`.
fn modules(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let root = root.to_path_buf();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&root).expect("under src").with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            let name = parts.join("::");
            if matches!(name.as_str(), "lib" | "main") || name.starts_with("server") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read module");
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let code: String =
                code.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
            out.insert(name, code);
        }
    }
    out
}

/// The module `path` (`a::b::Item`) names, the longest known prefix.
fn resolve<'a>(path: &str, names: &'a [String]) -> Option<&'a String> {
    names.iter().filter(|n| path == n.as_str() || path.starts_with(&format!("{n}::"))).max_by_key(|n| n.len())
}

fn idents_after<'a>(code: &'a str, marker: &str) -> Vec<&'a str> {
    code.match_indices(marker)
        .map(|(i, _)| {
            let rest = &code[i + marker.len()..];
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
            rest[..end].trim_end_matches(':')
        })
        .collect()
}

fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    graph_of(&engine_modules())
}

/// Which module imports which, by `crate::` and `super::` paths.
fn graph_of(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let names: Vec<String> = modules.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (module, code) in modules {
        let mut edges = BTreeSet::new();
        let mut paths: Vec<String> = idents_after(code, "crate::").into_iter().map(str::to_owned).collect();
        for group in code.match_indices("use crate::{").map(|(i, _)| &code[i + 12..]) {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            paths.extend(group.split(',').map(|p| p.trim().to_owned()));
        }
        let parent: Vec<&str> = module.split("::").collect();
        let parent = parent[..parent.len() - 1].join("::");
        for sup in idents_after(code, "super::") {
            paths.push(if parent.is_empty() { sup.to_owned() } else { format!("{parent}::{sup}") });
        }
        for p in paths {
            if let Some(target) = resolve(&p, &names) {
                if target != module {
                    edges.insert(target.clone());
                }
            }
        }
        graph.insert(module.clone(), edges);
    }
    graph
}

/// Strongly connected components of more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on: BTreeSet<&'g str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn the_engine_modules_form_no_import_cycle() {
    let graph = import_graph();
    assert!(graph.contains_key("actors::key") && graph.contains_key("types"), "modules found: {graph:?}");
    assert_eq!(cycles(&graph), Vec::<Vec<String>>::new(), "import cycles in the engine");
}

#[test]
fn the_server_modules_form_no_import_cycle() {
    let graph = graph_of(&server_modules());
    assert!(graph.contains_key("http::session") && graph.contains_key("state"), "modules found: {graph:?}");
    assert_eq!(cycles(&graph), Vec::<Vec<String>>::new(), "import cycles in the server crate");
}

#[test]
fn storage_imports_nothing_from_the_rest_of_the_crate() {
    let graph = import_graph();
    for (module, edges) in graph.iter().filter(|(m, _)| m.starts_with("storage")) {
        let outside: Vec<_> = edges.iter().filter(|e| !e.starts_with("storage")).collect();
        assert!(outside.is_empty(), "{module} imports {outside:?}");
    }
}

#[test]
fn bincode_and_backoff_stay_where_they_are_confined() {
    for (module, code) in engine_modules() {
        if code.contains("bincode::") {
            assert_eq!(module, "storage::record", "bincode outside the record format");
        }
        if code.contains("backoff::") {
            assert_eq!(module, "retry", "backoff outside the retry policy");
        }
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let mut graph = BTreeMap::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")] {
        graph.entry(a.to_owned()).or_insert_with(BTreeSet::new).insert(b.to_owned());
        graph.entry(b.to_owned()).or_insert_with(BTreeSet::new);
    }
    assert_eq!(cycles(&graph), vec![vec!["a".to_owned(), "b".to_owned(), "c".to_owned()]]);
}

/// Every module opens with a `//!` doc that says what it owns and what it
/// must not touch, in the engine and in the server.
#[test]
fn every_module_says_what_it_owns_and_must_not_touch() {
    let engine = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let server = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/datastorer-server/src");
    let mut missing = Vec::new();
    for (root, module) in
        engine_modules().into_keys().map(|m| (&engine, m)).chain(server_modules().into_keys().map(|m| (&server, m)))
    {
        let mut path = root.join(module.replace("::", "/"));
        path = if path.is_dir() { path.join("mod.rs") } else { path.with_extension("rs") };
        let text = std::fs::read_to_string(&path).expect("module source");
        let doc: String = text.lines().take_while(|l| l.starts_with("//!")).collect::<Vec<_>>().join("\n");
        if doc.is_empty() || !doc.contains("Must not") {
            missing.push(format!("{}: {module}", root.display()));
        }
    }
    assert!(missing.is_empty(), "modules without a //! doc naming what they must not do: {missing:?}");
}

/// `use` lines sit at the top of a file, not between its items.
#[test]
fn no_use_in_the_middle_of_a_file() {
    let mut late = Vec::new();
    for (module, code) in engine_modules() {
        let mut seen_item = false;
        for line in code.lines() {
            let starts_item = [
                "fn ",
                "pub fn ",
                "pub(crate) fn ",
                "struct ",
                "pub struct ",
                "pub(crate) struct ",
                "enum ",
                "pub enum ",
                "impl",
                "const ",
                "pub const ",
                "static ",
            ]
            .iter()
            .any(|p| line.starts_with(p));
            if starts_item {
                seen_item = true;
            } else if seen_item && (line.starts_with("use ") || line.starts_with("pub use ")) {
                late.push(format!("{module}: {line}"));
            }
        }
    }
    assert!(late.is_empty(), "use after the first item: {late:?}");
}

/// The `Backend` methods that touch storage, and who may call them besides
/// the queue (ARCHITECTURE.md, "Architecture invariants"): the supervisor
/// the final `flush` of a shutdown, `Datastorer::start` (`lib`) the
/// `claim_owner` of its owner id, `backup` the `snapshot` of an online backup. `storage` and `testing` are the backends
/// and their suites. Every other method (`name`, `capabilities`, `clock`,
/// `floor_cache`, `notices`, `is_blocking`, `now_ms`) answers without I/O.
const BACKEND_IO: [&str; 10] = [
    "get",
    "get_many",
    "write_batch",
    "write_all",
    "delete",
    "scan_prefix",
    "flush",
    "claim_owner",
    "snapshot",
    "reclaim_deleted",
];

/// Calls of a storage method on a backend outside the modules the map allows.
fn backend_calls_outside_the_queue(modules: &BTreeMap<String, String>) -> Vec<String> {
    let allowed = |module: &str, method: &str| {
        module == "actors::queue"
            || module.starts_with("actors::queue::")
            || module.starts_with("storage")
            || module.starts_with("testing")
            || (module == "actors::supervisor" && method == "flush")
            || (module == "lib" && method == "claim_owner")
            // An online backup reads the backend's own snapshot, beside the
            // queue (a long read the queue would otherwise stall on).
            || (module == "backup" && method == "snapshot")
            // An erasure's maintenance (PostgreSQL's VACUUM), not a write.
            || (module == "erasure" && method == "reclaim_deleted")
    };
    let mut out = Vec::new();
    for (module, code) in modules {
        for method in BACKEND_IO {
            for receiver in ["backend.", "backend()."] {
                if code.contains(&format!("{receiver}{method}(")) && !allowed(module, method) {
                    out.push(format!("{module} calls {receiver}{method}"));
                }
            }
        }
    }
    out
}

#[test]
fn only_the_queue_calls_the_backend() {
    let mut modules = engine_modules();
    // `lib` is left out of the import graph, not out of this rule.
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs");
    modules.insert("lib".into(), std::fs::read_to_string(lib).expect("read lib.rs"));
    assert_eq!(backend_calls_outside_the_queue(&modules), Vec::<String>::new());
}

#[test]
fn the_backend_check_finds_a_call_from_a_key_actor() {
    let mut modules = BTreeMap::new();
    modules.insert("actors::key".to_owned(), "let v = self.engine.backend.get(&k);".to_owned());
    modules.insert("actors::supervisor".to_owned(), "backend.flush(); backend.write_batch(&ops);".to_owned());
    assert_eq!(
        backend_calls_outside_the_queue(&modules),
        vec!["actors::key calls backend.get".to_owned(), "actors::supervisor calls backend.write_batch".to_owned()]
    );
}

/// Imports of `types` other than `storage`'s plain types.
fn types_imports(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    graph.get("types").into_iter().flatten().filter(|m| !m.starts_with("storage")).cloned().collect()
}

#[test]
fn types_is_a_leaf() {
    assert_eq!(types_imports(&import_graph()), Vec::<String>::new(), "types imports more than storage");
}

#[test]
fn the_leaf_check_finds_an_import() {
    let mut graph = BTreeMap::new();
    graph.insert("types".to_owned(), BTreeSet::from(["storage".to_owned(), "store".to_owned()]));
    assert_eq!(types_imports(&graph), vec!["store".to_owned()]);
}

/// Words of the server's command line in the engine's code (comments
/// aside): the engine is told nothing of the server that embeds it.
fn cli_words(modules: &BTreeMap<String, String>) -> Vec<String> {
    let words = ["datastorer serve", "--data-dir", "--database-url", "--advertise-url", "--owner-id", "--listen"];
    let mut out = Vec::new();
    for (module, code) in modules {
        for w in words {
            if code.contains(w) {
                out.push(format!("{module}: {w}"));
            }
        }
    }
    out
}

#[test]
fn the_engine_names_no_command_line_flag() {
    assert_eq!(cli_words(&engine_modules()), Vec::<String>::new());
}

#[test]
fn the_flag_check_finds_a_flag() {
    let mut modules = BTreeMap::new();
    modules.insert("storage::sled_backend".to_owned(), r#"format!("use another --data-dir")"#.to_owned());
    assert_eq!(cli_words(&modules), vec!["storage::sled_backend: --data-dir".to_owned()]);
}

/// Storage-key prefixes spelled out (`b"d\0"`, `b"m\0…"`) outside
/// `storage`: the layout has one owner, which names them
/// (`RECORDS_PREFIX`, `EPOCH_FLOORS_PREFIX`, `OWNER_ID_KEY`, `storage_key`).
fn key_prefixes_outside_storage(modules: &BTreeMap<String, String>) -> Vec<String> {
    modules
        .iter()
        .filter(|(m, _)| !m.starts_with("storage"))
        .filter(|(_, code)| code.contains(r#"b"d\0"#) || code.contains(r#"b"m\0"#))
        .map(|(m, _)| m.clone())
        .collect()
}

#[test]
fn storage_key_prefixes_are_spelled_only_in_storage() {
    let mut found = key_prefixes_outside_storage(&engine_modules());
    found.extend(key_prefixes_outside_storage(&server_modules()).into_iter().map(|m| format!("server {m}")));
    assert_eq!(found, Vec::<String>::new());
}

#[test]
fn the_prefix_check_finds_a_prefix() {
    let mut modules = BTreeMap::new();
    modules.insert("tools::check".to_owned(), r#"opened.for_each_record(b"d\0", |k, v| {"#.to_owned());
    modules.insert("storage::mod".to_owned(), r#"const RECORDS_PREFIX: &[u8] = b"d\0";"#.to_owned());
    assert_eq!(key_prefixes_outside_storage(&modules), vec!["tools::check".to_owned()]);
}

/// `impl … Store<…>` blocks outside `store/`: all of `Store` lives in one
/// folder, split by reason to change (ARCHITECTURE.md, code map).
fn store_impls_outside_store(modules: &BTreeMap<String, String>) -> Vec<String> {
    modules
        .iter()
        .filter(|(m, _)| m.as_str() != "store" && !m.starts_with("store::"))
        .filter(|(_, code)| code.lines().any(|l| l.starts_with("impl") && l.contains(" Store<")))
        .map(|(m, _)| m.clone())
        .collect()
}

#[test]
fn all_of_store_lives_under_store() {
    assert_eq!(store_impls_outside_store(&engine_modules()), Vec::<String>::new());
}

#[test]
fn the_store_check_finds_an_impl_elsewhere() {
    let mut modules = BTreeMap::new();
    modules.insert("inbox".to_owned(), "impl<T: Document> Store<T> {\n    pub fn post() {}\n}".to_owned());
    modules.insert("store::admin".to_owned(), "impl<T: Document> Store<T> {}".to_owned());
    assert_eq!(store_impls_outside_store(&modules), vec!["inbox".to_owned()]);
}

/// Blocking calls in the key actor's modules: a key actor never blocks its
/// arbiter (ARCHITECTURE.md, "Architecture invariants"); it waits only by
/// awaiting futures.
fn blocking_calls_in_key_actors(modules: &BTreeMap<String, String>) -> Vec<String> {
    let blocking =
        ["std::thread::sleep", "block_on(", ".blocking_recv(", ".blocking_lock(", ".recv_timeout(", "std::sync::mpsc"];
    let mut out = Vec::new();
    for (module, code) in modules.iter().filter(|(m, _)| m.starts_with("actors::key")) {
        for call in blocking {
            if code.contains(call) {
                out.push(format!("{module}: {call}"));
            }
        }
    }
    out
}

#[test]
fn key_actors_never_block() {
    assert_eq!(blocking_calls_in_key_actors(&engine_modules()), Vec::<String>::new());
}

#[test]
fn the_blocking_check_finds_a_sleep() {
    let mut modules = BTreeMap::new();
    modules.insert("actors::key::writes".to_owned(), "std::thread::sleep(Duration::from_millis(1));".to_owned());
    modules.insert("storage::sled_backend".to_owned(), "std::thread::sleep(d);".to_owned());
    assert_eq!(blocking_calls_in_key_actors(&modules), vec!["actors::key::writes: std::thread::sleep".to_owned()]);
}
