//! The compile checks: route order, fallthrough, and every error naming its field.

use http::Method;

use super::*;
use crate::config::RouteMethod;
use crate::routes::Recognized;

fn keyed(mut config: Config, dir: &tempfile::TempDir) -> Config {
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a shared secret of at least 32 bytes").unwrap();
    config.jwt.secret_file = Some(secret);
    config
}

#[test]
fn the_shipped_policy_picks_the_most_specific_route() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Plan::compile(keyed(Config::default(), &dir)).unwrap();
    let table = &plan.table;
    let admin = Access::Roles(vec!["admin".into()]);
    let cases = [
        ("GET", "/api/products", "/api/products/* GET,HEAD", Access::Public),
        ("HEAD", "/api/products/1", "/api/products/* GET,HEAD", Access::Public),
        ("PUT", "/api/products/1", "/api/products/*", admin.clone()),
        ("POST", "/api/products", "/api/products/*", admin.clone()),
        ("DELETE", "/api/products/1", "/api/products/*", admin.clone()),
        ("POST", "/api/users/signup", "/api/users/signup POST", Access::Public),
        ("POST", "/api/users/login", "/api/users/login POST", Access::Public),
        ("POST", "/api/users/login/", "/api/users/login POST", Access::Public),
        ("GET", "/api/users/login", "/api/users/*", Access::Token),
        ("POST", "/api/users/login/x", "/api/users/*", Access::Token),
        ("POST", "/api/users/logout", "/api/users/*", Access::Token),
        ("GET", "/api/users", "/api/users", admin.clone()),
        ("GET", "/api/users/", "/api/users", admin.clone()),
        ("POST", "/api/users", "/api/users", admin.clone()),
        ("GET", "/api/users/2", "/api/users/*", Access::Token),
        ("DELETE", "/api/users/2", "/api/users/*", Access::Token),
        ("PUT", "/api/users/2", "/api/users/* PUT", Access::Token),
        ("PUT", "/api/users", "/api/users", admin.clone()),
        ("GET", "/api/checkout", "/api/checkout/*", Access::Token),
        ("POST", "/api/checkout/", "/api/checkout/*", Access::Token),
    ];
    for (method, path, name, access) in cases {
        let method: Method = method.parse().unwrap();
        let Recognized::Route(i) = table.recognize_path(&method, path) else { panic!("{method} {path}: no route") };
        let route = &table.routes[i];
        assert_eq!((&*route.name, &route.access), (name, &access), "{method} {path}");
    }
    for path in ["/api/productsX", "/api", "/api/user", "/", "/healthz"] {
        assert_eq!(table.recognize_path(&Method::GET, path), Recognized::NotFound, "{path}");
    }
}

#[test]
fn a_path_taking_other_methods_is_405() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = keyed(Config::default(), &dir);
    config.routes.retain(|r| r.methods == [RouteMethod::Get, RouteMethod::Head]);
    let plan = Plan::compile(config).unwrap();
    assert_eq!(plan.table.recognize_path(&Method::DELETE, "/api/products/1"), Recognized::MethodNotAllowed);
}

#[test]
fn head_goes_where_get_goes_and_other_methods_only_to_a_route_as_strict() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[upstreams.u]\nendpoints = [\"http://a:1\"]\n\
                [[routes]]\nprefix = \"/a\"\nmethods = [\"GET\"]\nupstream = \"u\"\naccess = \"public\"\n\
                [[routes]]\nprefix = \"/a\"\nupstream = \"u\"\naccess = \"token\"";
    let config: Config = toml::from_str(text).unwrap();
    let plan = Plan::compile(keyed_unless_jwt(config, &dir, text)).unwrap();
    let table = &plan.table;
    let access = |method: Method| match table.recognize_path(&method, "/a/1") {
        Recognized::Route(i) => table.routes[i].access.clone(),
        other => panic!("{method}: {other:?}"),
    };
    assert_eq!(access(Method::HEAD), Access::Public, "HEAD with GET");
    assert_eq!(access(Method::POST), Access::Token, "a public GET route may leave POST to a token route");
}

#[test]
fn errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let up = "[upstreams.u]\nendpoints = [\"http://a:1\"]\n";
    let cases: Vec<(String, &str)> = vec![
        ("listen = \"nowhere\"".into(), "listen"),
        ("max_concurrent_requests = 0".into(), "max_concurrent_requests"),
        ("[upstreams.u]\nendpoints = [\"ftp://a:1\"]".into(), "upstreams.u.endpoints[0]"),
        ("[upstreams.u]\ndns = \"tasks.a\"".into(), "upstreams.u.dns"),
        ("[upstreams.u]\ndns = \"tasks.a:1\"\nca_file = \"/ca.pem\"".into(), "upstreams.u.ca_file"),
        ("[upstreams.u]\ndns = \"tasks.a:1\"\nclient_cert_file = \"/c.pem\"".into(), "upstreams.u.client_cert_file"),
        ("[upstreams.u]\n".into(), "upstreams.u.endpoints"),
        (format!("{up}retry = {{ attempts = 0 }}"), "upstreams.u.retry.attempts"),
        (format!("{up}[[routes]]\nupstream = \"u\"\naccess = \"public\""), "routes[0].prefix"),
        (format!("{up}[[routes]]\nprefix = \"api\"\nupstream = \"u\"\naccess = \"public\""), "routes[0].prefix"),
        (format!("{up}[[routes]]\nprefix = \"/\"\nupstream = \"u\"\naccess = \"public\""), "routes[0].prefix"),
        (format!("{up}[[routes]]\nprefix = \"/a/%61\"\nupstream = \"u\"\naccess = \"public\""), "routes[0].prefix"),
        (
            format!("{up}[[routes]]\nprefix = \"/a\"\npath = \"/b\"\nupstream = \"u\"\naccess = \"public\""),
            "routes[0].path",
        ),
        (format!("{up}[[routes]]\nprefix = \"/a\"\nupstream = \"v\"\naccess = \"public\""), "routes[0].upstream"),
        (format!("{up}[[routes]]\nprefix = \"/a\"\nupstream = \"u\""), "routes[0].access"),
        (
            format!("{up}[[routes]]\nprefix = \"/a\"\nmethods = [\"get\"]\nupstream = \"u\"\naccess = \"public\""),
            "routes[0].methods",
        ),
        (
            format!(
                "{up}[[routes]]\nprefix = \"/a\"\nmethods = [\"GET\", \"GET\"]\nupstream = \"u\"\naccess = \"public\""
            ),
            "routes[0].methods[1]",
        ),
        (
            format!("{up}[[routes]]\nprefix = \"/a\"\nstrip_prefix = \"/b\"\nupstream = \"u\"\naccess = \"public\""),
            "routes[0].strip_prefix",
        ),
        (
            format!("{up}[[routes]]\nprefix = \"/a\"\nupstream = \"u\"\naccess = {{ roles = [] }}"),
            "routes[0].access.roles",
        ),
        (
            format!(
                "{up}[[routes]]\nprefix = \"/a\"\nmethods = [\"GET\", \"PUT\"]\nupstream = \"u\"\naccess = \"public\"\n[[routes]]\nprefix = \"/a/\"\nmethods = [\"PUT\"]\nupstream = \"u\"\naccess = \"token\""
            ),
            "routes[1]",
        ),
        (
            format!(
                "{up}[[routes]]\nprefix = \"/a\"\nupstream = \"u\"\naccess = \"token\"\n[jwt]\nalgorithm = \"EdDSA\""
            ),
            "jwt.public_key_file",
        ),
        (
            format!(
                "{up}[[routes]]\nprefix = \"/a\"\nupstream = \"u\"\naccess = \"token\"\n[jwt]\nalgorithm = \"EdDSA\"\nprivate_key_file = \"k.pem\""
            ),
            "jwt.private_key_file",
        ),
        (
            format!(
                "{up}[[routes]]\nprefix = \"/a\"\nupstream = \"u\"\naccess = \"token\"\n[jwt]\nsecret_file = \"/nonexistent\""
            ),
            "jwt.secret_file",
        ),
    ];
    let limited = |limit: &str, route_limits: &str, access: &str| {
        format!(
            "{up}[[routes]]\nprefix = \"/a\"\nupstream = \"u\"\naccess = {access}\nlimits = {route_limits}\n{limit}"
        )
    };
    let lim = |body: &str| format!("[limits.l]\n{body}");
    let ok = "rate = 1\nper = \"second\"\nkey = \"client_ip\"";
    let public = "\"public\"";
    let mut cases = cases;
    cases.extend([
        ("trusted_proxies = [\"10.0.0.0/33\"]".to_owned(), "trusted_proxies"),
        ("forwarded_header = \"x-real-ip\"".to_owned(), "forwarded_header"),
        (limited(&lim("rate = 0\nper = \"second\"\nkey = \"client_ip\""), "[\"l\"]", public), "limits.l.rate"),
        (limited(&lim("rate = 1\nper = \"day\"\nkey = \"client_ip\""), "[\"l\"]", public), "limits.l.per"),
        (limited(&lim(&format!("{ok}\nburst = 0")), "[\"l\"]", public), "limits.l.burst"),
        (limited(&lim("rate = 1\nper = \"second\"\nkey = \"ip\""), "[\"l\"]", public), "limits.l.key"),
        (
            limited(&lim("rate = 1\nper = \"second\"\nkey = [\"client_ip\", \"claim:roles\"]"), "[\"l\"]", public),
            "limits.l.key[1]",
        ),
        (limited(&lim(&format!("{ok}\nstore = \"redis\"")), "[\"l\"]", public), "limits.l.store"),
        (limited(&lim(&format!("{ok}\non_store_error = \"maybe\"")), "[\"l\"]", public), "limits.l.on_store_error"),
        (limited(&format!("[limits.\"a b\"]\n{ok}"), "[\"a b\"]", public), "limits.a b"),
        (limited(&lim(ok), "[\"m\"]", public), "routes[0].limits[0]"),
        (limited(&lim(ok), "[\"l\", \"l\"]", public), "routes[0].limits[1]"),
        (limited(&lim("rate = 1\nper = \"second\"\nkey = \"subject\""), "[\"l\"]", public), "routes[0].limits[0]"),
        (
            format!(
                "{up}[[routes]]\nprefix = \"/a\"\nupstream = \"u\"\naccess = \"public\"\n\
                 [[routes]]\nprefix = \"/a/admin\"\nmethods = [\"POST\"]\nupstream = \"u\"\naccess = {{ roles = [\"admin\"] }}"
            ),
            "routes[1].methods",
        ),
    ]);
    // Read as the server reads a file: a value of the wrong kind is refused as
    // the file is parsed, anything else as it is compiled; either names the field.
    for (text, field) in cases {
        let err = Config::from_toml(&text, "gateway.toml", |_| None)
            .and_then(|config| Plan::compile(keyed_unless_jwt(config, &dir, &text)))
            .unwrap_err();
        assert_eq!(err.field, field, "{text}\n{err}");
    }
    // The default routes need a token, so the default needs a key.
    assert_eq!(Plan::compile(Config::default()).unwrap_err().field, "jwt");
}

fn keyed_unless_jwt(config: Config, dir: &tempfile::TempDir, text: &str) -> Config {
    if text.contains("[jwt]") { config } else { keyed(config, dir) }
}

#[tokio::test]
async fn a_reload_takes_the_tls_listener_as_loaded_and_reads_no_certificate_again() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let text = "[upstreams.u]\nendpoints = [\"http://a:1\"]\n\
                [[routes]]\nprefix = \"/a\"\nupstream = \"u\"\naccess = \"public\"";
    let mut config: Config = toml::from_str(text).unwrap();
    config.tls = Some(crate::config::TlsConfig::new("127.0.0.1:0", &cert_file, &key_file));
    let plan = Plan::compile(config.clone()).unwrap();
    // Mid-rotation, the files are gone: a reload of the routes is not refused for it.
    std::fs::remove_file(&cert_file).unwrap();
    let next = plan.next(config.clone()).unwrap();
    let (before, after) = (plan.settings.tls.as_ref().unwrap(), next.settings.tls.as_ref().unwrap());
    assert!(Arc::ptr_eq(&before.certificate, &after.certificate), "the certificate the server serves, kept");
    // A first compile does read them.
    assert_eq!(Plan::compile(config).unwrap_err().field, "tls.cert_file");
}

#[test]
fn grpc_retries_name_methods_and_statuses_together() {
    let with = |retry: &str| {
        let text = format!(
            "[upstreams.u]\nendpoints = [\"http://127.0.0.1:9\"]\nhttp2 = true\nretry = {{ {retry} }}\n\
             [[routes]]\nprefix = \"/a\"\nupstream = \"u\"\naccess = \"public\""
        );
        Plan::compile(toml::from_str(&text).unwrap()).map(|_| ()).map_err(|e| e.field)
    };
    assert_eq!(with("grpc_statuses = [\"unavailable\"], grpc_methods = [\"/pkg.Svc/Get\"]"), Ok(()));
    for bad in ["pkg.Svc/Get", "/pkg.Svc", "/pkg.Svc/Get/x", "//Get", "/pkg.Svc/Ge t"] {
        let retry = format!("grpc_statuses = [\"unavailable\"], grpc_methods = [{bad:?}]");
        assert_eq!(with(&retry), Err("upstreams.u.retry.grpc_methods[0]".into()), "{bad}");
    }
    assert_eq!(with("grpc_statuses = [\"unavailable\"]"), Err("upstreams.u.retry.grpc_statuses".into()));
    assert_eq!(with("grpc_methods = [\"/pkg.Svc/Get\"]"), Err("upstreams.u.retry.grpc_statuses".into()));
    assert!(toml::from_str::<Config>("[upstreams.u]\nretry = { grpc_statuses = [\"ok\"] }").is_err(), "a closed set");
}
