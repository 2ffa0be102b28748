//! The workspace's shape holds: no service crate links another (the worker may link executions,
//! whose store it writes through; the `one-agents` binary composes them all), and no workspace
//! crate depends on itself through others, dev-dependencies included.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Each workspace crate: its folder, and the workspace crates it names in any dependency table.
fn workspace() -> BTreeMap<String, (PathBuf, BTreeSet<String>)> {
    let mut manifests = Vec::new();
    for folder in ["crates", "services"] {
        for entry in std::fs::read_dir(root().join(folder)).unwrap() {
            let path = entry.unwrap().path();
            if path.join("Cargo.toml").is_file() {
                manifests.push(path);
            }
        }
    }
    manifests.push(root().join("tests"));
    manifests.push(root().join("bench"));
    let parsed: Vec<(PathBuf, toml::Value)> = manifests
        .into_iter()
        .map(|dir| {
            let text = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
            (dir, text.parse().unwrap())
        })
        .collect();
    let names: BTreeSet<String> =
        parsed.iter().map(|(_, m)| m["package"]["name"].as_str().unwrap().to_owned()).collect();
    parsed
        .into_iter()
        .map(|(dir, manifest)| {
            let mut uses = BTreeSet::new();
            for table in ["dependencies", "dev-dependencies", "build-dependencies"] {
                for name in
                    manifest.get(table).and_then(toml::Value::as_table).into_iter().flatten().map(|(k, _)| k)
                {
                    if names.contains(name) {
                        uses.insert(name.clone());
                    }
                }
            }
            (manifest["package"]["name"].as_str().unwrap().to_owned(), (dir, uses))
        })
        .collect()
}

#[test]
fn no_service_crate_links_another() {
    let crates = workspace();
    let service = |name: &str| crates[name].0.starts_with(root().join("services")) && name != "one-agents";
    let mut links = Vec::new();
    for (name, (_, uses)) in &crates {
        if !service(name) {
            continue;
        }
        for used in uses {
            if service(used) && !(name == "oa-worker" && used == "oa-executions") {
                links.push(format!("{name} → {used}"));
            }
        }
    }
    assert!(links.is_empty(), "service crates linking others: {links:?}");
}

#[test]
fn no_workspace_crate_depends_on_itself_through_others() {
    let crates = workspace();
    fn reaches(
        crates: &BTreeMap<String, (PathBuf, BTreeSet<String>)>,
        from: &str,
        to: &str,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        crates[from]
            .1
            .iter()
            .any(|next| next == to || (seen.insert(next.clone()) && reaches(crates, next, to, seen)))
    }
    let cycles: Vec<&String> =
        crates.keys().filter(|name| reaches(&crates, name, name, &mut BTreeSet::new())).collect();
    assert!(cycles.is_empty(), "crates on a dependency cycle: {cycles:?}");
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn sql_lives_in_store_modules() {
    // The test kit seeds and inspects databases; `oa-store` is the pool and the transaction helpers.
    let exempt = ["oa-testkit", "oa-store", "oa-e2e", "oa-bench"];
    let mut outside = Vec::new();
    for (name, (dir, _)) in workspace() {
        if exempt.contains(&name.as_str()) {
            continue;
        }
        let mut files = Vec::new();
        sources(&dir.join("src"), &mut files);
        for file in files {
            let in_store = file.components().any(|c| c.as_os_str() == "store" || c.as_os_str() == "store.rs");
            let text = std::fs::read_to_string(&file).unwrap();
            if !in_store && text.contains("sqlx::query") {
                outside.push(file.strip_prefix(root()).unwrap().display().to_string());
            }
        }
    }
    assert!(outside.is_empty(), "SQL outside a store module: {outside:?}");
}
