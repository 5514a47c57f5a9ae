//! `demo-gateway check`: the server's own compile, without serving.

use std::process::Command;

fn check(config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_demo-gateway"))
        .args(["check", "--config"])
        .arg(&file)
        .env_remove("GATEWAY_CONFIG")
        .output()
        .unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (output.status.code().unwrap(), text(output.stdout), text(output.stderr))
}

const UPSTREAM: &str = "[upstreams.u]\nendpoints = [\"http://127.0.0.1:9\"]\n";

#[test]
fn a_good_configuration_is_summed_up_in_one_line() {
    let (code, out, _) = check(&format!(
        "{UPSTREAM}[limits]\n[[routes]]\nprefix = \"/a\"\nupstream = \"u\"\naccess = \"public\"\n\
         [[routes]]\npath = \"/b\"\nupstream = \"u\"\naccess = \"public\""
    ));
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("ok: 2 routes, 1 upstreams, 0 limits, hash "), "{out}");
}

#[test]
fn every_field_at_fault_is_named_not_the_first_alone() {
    let (code, _, err) = check(&format!(
        "{UPSTREAM}[upstreams.v]\nendpoints = [\"ftp://x\"]\n[limits.l]\nrate = 0\nper = \"second\"\nkey = \"global\"\n\
         [[routes]]\nprefix = \"/a\"\nupstream = \"u\"\n\
         [[routes]]\nprefix = \"/b\"\nupstream = \"nowhere\"\naccess = \"public\"\n\
         [[routes]]\nprefix = \"/c\"\nupstream = \"v\"\naccess = \"public\"\n\
         [[routes]]\nprefix = \"/d\"\nupstream = \"u\"\naccess = \"public\"\nlimits = [\"l\"]"
    ));
    assert_eq!(code, 2);
    let fields: Vec<&str> = err.lines().filter_map(|line| line.split(": ").nth(2)).collect();
    // The route on the refused upstream `v` and the one on the refused limit
    // `l` are left to those errors.
    assert_eq!(
        fields,
        ["upstreams.v.endpoints[0]", "limits.l.rate", "routes[0].access", "routes[1].upstream"],
        "{err}"
    );
}

#[test]
fn an_error_exits_2_naming_its_field() {
    for (config, field) in [
        (format!("{UPSTREAM}[[routes]]\nprefix = \"/a\"\nupstream = \"v\"\naccess = \"public\""), "routes[0].upstream"),
        (format!("{UPSTREAM}[[routes]]\nprefix = \"/a\"\nupstream = \"u\""), "routes[0].access"),
        ("max_connections = 0".to_owned(), "max_connections"),
        ("no_such_setting = 1".to_owned(), "gateway.toml"),
        (
            format!("admin_token_file = \"/t\"\n{UPSTREAM}"),
            "admin_token_file: the config endpoints are served on admin_listen",
        ),
    ] {
        let (code, out, err) = check(&config);
        assert_eq!(code, 2, "{config}: {out}{err}");
        assert!(err.contains(field), "{config}: {err}");
    }
}
