//! Parsing, defaults, environment overrides and masking.

use super::*;

#[test]
fn an_empty_file_is_the_default_and_env_overrides_it() {
    let parsed: Config = toml::from_str("").unwrap();
    assert_eq!(parsed, Config::default());
    let env = |name: &str| match name {
        "GATEWAY_LISTEN" => Some("0.0.0.0:9000".to_owned()),
        "REDIS_URL" => Some("redis://:pw@redis:6379".to_owned()),
        "GATEWAY_CORS_ORIGINS" => Some("https://a.example, https://b.example".to_owned()),
        "JWT_PUBLIC_KEY_FILE" => Some("/run/secrets/jwt_public.pem".to_owned()),
        _ => None,
    };
    let config = Config::load(None, env).unwrap();
    assert_eq!(config.listen, "0.0.0.0:9000");
    assert_eq!(config.cors_origins, ["https://a.example", "https://b.example"]);
    assert_eq!(config.jwt.public_key_file.as_deref(), Some(Path::new("/run/secrets/jwt_public.pem")));
    assert!(config.to_masked_toml().contains("redis://:********@redis:6379"));
}

#[test]
fn the_printed_configuration_reads_back_the_same() {
    let config = Config::default();
    let text = config.to_masked_toml();
    assert!(text.contains("access = \"public\""), "{text}");
    assert!(text.contains("roles = [\"admin\"]"), "{text}");
    assert_eq!(toml::from_str::<Config>(&text).unwrap(), config);
}

#[test]
fn the_swarm_configuration_ships_the_same_policy() {
    let swarm: Config = toml::from_str(include_str!("../../../deploy/gateway.toml")).unwrap();
    assert_eq!(swarm.routes, shipped_routes());
    assert_eq!(swarm.limits, shipped_limits());
    assert_eq!((&swarm.jwt.issuer, &swarm.jwt.audience), (&shipped_jwt().issuer, &shipped_jwt().audience));
    assert_eq!(swarm.upstreams.keys().collect::<Vec<_>>(), Config::default().upstreams.keys().collect::<Vec<_>>());
    let jwt = &swarm.jwt;
    assert!(jwt.private_key_file.is_none() && jwt.secret_file.is_none() && jwt.public_key_file.is_none(), "no key");
    assert!(jwt.discovery_url.is_some(), "the keys by discovery");
}

#[test]
fn access_is_one_of_three_shapes() {
    let parse = |access: &str| toml::from_str::<RouteConfig>(&format!("upstream = \"u\"\naccess = {access}"));
    assert_eq!(parse("\"public\"").unwrap().access, Some(Access::Public));
    assert_eq!(parse("\"token\"").unwrap().access, Some(Access::Token));
    assert_eq!(parse("{ roles = [\"admin\"] }").unwrap().access, Some(Access::Roles(vec!["admin".into()])));
    for wrong in ["\"open\"", "true", "{ role = \"admin\" }"] {
        let err = parse(wrong).unwrap_err();
        assert!(err.message().contains("\"public\", \"token\""), "{wrong}: {err}");
    }
}

#[test]
fn load_reports_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, "request_timeout_ms = \"soon\"").unwrap();
    let err = Config::load(Some(&path), |_| None).unwrap_err();
    assert_eq!(err.field, "request_timeout_ms");
    assert!(err.message.contains("invalid type"), "{err}");
    assert!(err.message.contains(&format!("{}, line 1", path.display())), "{err}");
    // Below a table header, in an array of tables, quoted: the whole path.
    let text = "[upstreams.u]\nendpoints = []\n[[routes]]\nprefix = \"/a\"\n[[routes]]\nprefix = \"/b\"\n\
                methods = [\"get\"]\n[limits.\"a b\"]\nrate = 1\nper = \"day\"\nkey = \"global\"";
    let err = Config::from_toml(&text.replace("day", "hour"), "gateway.toml", |_| None).unwrap_err();
    assert_eq!((err.field.as_str(), err.message.contains("line 7")), ("routes[1].methods", true), "{err}");
    let err = Config::from_toml(&text.replace("get", "GET"), "gateway.toml", |_| None).unwrap_err();
    assert_eq!(err.field, "limits.a b.per", "{err}");
    let err = Config::load(Some(&dir.path().join("missing.toml")), |_| None).unwrap_err();
    assert!(err.field.ends_with("missing.toml"), "a file that cannot be read is named: {err}");
}
