//! The libraries' minimum Rust version holds for what they depend on: no crate
//! in either library's normal dependency graph (all features on) declares a
//! `rust-version` above the workspace's. (Only one toolchain can be installed
//! here, so this and clippy's `incompatible_msrv` lint, which flags standard
//! library items newer than `rust-version`, are the MSRV checks CI can run.)

use std::collections::{HashMap, HashSet};
use std::process::Command;

/// `1.88` as `[1, 88, 0]`, so that it equals `1.88.0`.
fn version(v: &str) -> [u32; 3] {
    let mut parts = [0; 3];
    for (part, n) in parts.iter_mut().zip(v.split('.')) {
        *part = n.parse().unwrap();
    }
    parts
}

#[test]
fn no_dependency_needs_a_newer_rust_than_the_libraries_declare() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--all-features", "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let packages: HashMap<&str, &serde_json::Value> =
        metadata["packages"].as_array().unwrap().iter().map(|p| (p["id"].as_str().unwrap(), p)).collect();
    let nodes: HashMap<&str, &serde_json::Value> =
        metadata["resolve"]["nodes"].as_array().unwrap().iter().map(|n| (n["id"].as_str().unwrap(), n)).collect();

    for library in ["tower-gateway", "tower-gateway-auth"] {
        let root = packages.values().find(|p| p["name"] == library).unwrap();
        let msrv = version(root["rust_version"].as_str().expect("the library declares rust-version"));
        let mut seen = HashSet::new();
        let mut stack = vec![root["id"].as_str().unwrap()];
        let mut too_new = Vec::new();
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            if let Some(needs) = packages[id]["rust_version"].as_str()
                && version(needs) > msrv
            {
                too_new.push(format!("{} {} needs {needs}", packages[id]["name"], packages[id]["version"]));
            }
            for dep in nodes[id]["deps"].as_array().unwrap() {
                let normal = dep["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].is_null());
                if normal {
                    stack.push(dep["pkg"].as_str().unwrap());
                }
            }
        }
        assert!(seen.len() > 10, "{library}: only {} crates walked", seen.len());
        assert!(too_new.is_empty(), "{library} declares {msrv:?} but: {too_new:?}");
    }
}
