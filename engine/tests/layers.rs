//! The engine's modules depend on each other one way only: no module reaches, directly or
//! through others, back to itself (the layering of `engine/src/lib.rs`). Read from the
//! sources' `crate::` paths outside comments.

use std::collections::{BTreeMap, BTreeSet};

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    // Where cargo runs the test from (set when it runs it), else where it was built: a test
    // binary reused from a build of another checkout must read this checkout's sources.
    let root =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let src = std::path::Path::new(&root).join("src");
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("engine/src") {
        let path = entry.expect("an entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let name = path.file_stem().and_then(|s| s.to_str()).expect("a name").to_string();
        let text = std::fs::read_to_string(&path).expect("readable");
        let mut uses = BTreeSet::new();
        for line in text.lines().map(str::trim_start).filter(|l| !l.starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                let module: String =
                    rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                // `crate::Foo` (a re-export at the root) is not a module edge.
                if !module.is_empty() && module != name {
                    uses.insert(module);
                }
            }
        }
        graph.insert(name, uses);
    }
    graph
}

/// A cycle through `node`, if there is one: the path back to it.
fn cycle_from(
    graph: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|n| n == node) {
        let mut cycle = path[at..].to_vec();
        cycle.push(node.to_string());
        return Some(cycle);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_string());
    for next in graph.get(node).into_iter().flatten() {
        if let Some(cycle) = cycle_from(graph, next, path, done) {
            return Some(cycle);
        }
    }
    path.pop();
    done.insert(node.to_string());
    None
}

#[test]
fn engine_modules_form_no_cycle() {
    let graph = module_graph();
    assert!(graph.len() > 10, "read the engine's modules: {graph:?}");
    assert!(graph["model"].contains("tensor_model"), "the reader sees `use crate::` edges");
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, node, &mut Vec::new(), &mut done) {
            panic!("engine modules depend on each other in a cycle: {}", cycle.join(" -> "));
        }
    }
}
