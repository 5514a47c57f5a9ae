//! The routing table: each kind of match, the precedence between them
//! (`routes::matching`), and a property test against a brute-force oracle.

use http::{HeaderMap, Method};
use proptest::prelude::*;

use super::*;
use crate::routes::{Facts, Recognized};

/// A table of routes, each answering nothing but its name, over one upstream.
const TABLE: &str = r#"
[upstreams.u]
endpoints = ["http://127.0.0.1:9"]

[[routes]]
name = "any-prefix-a"
prefix = "/a"
upstream = "u"
access = "public"

[[routes]]
name = "any-prefix-a-b"
prefix = "/a/b"
upstream = "u"
access = "public"

[[routes]]
name = "any-exact-a-b"
path = "/a/b"
upstream = "u"
access = "public"

[[routes]]
name = "any-prefix-a-get"
prefix = "/a"
methods = ["GET"]
upstream = "u"
access = "public"

[[routes]]
name = "canary-header"
prefix = "/a"
headers = [{ name = "x-canary", value = "always" }]
upstream = "u"
access = "public"

[[routes]]
name = "version-regex"
prefix = "/a"
headers = [{ name = "x-version", value = "v[2-9]", type = "regular_expression" }]
upstream = "u"
access = "public"

[[routes]]
name = "canary-and-version"
prefix = "/a"
headers = [{ name = "x-canary", value = "always" }, { name = "x-version", value = "v2" }]
upstream = "u"
access = "public"

[[routes]]
name = "debug-query"
prefix = "/a"
query_params = [{ name = "debug", value = "on" }]
upstream = "u"
access = "public"

[[routes]]
name = "header-beats-query"
prefix = "/q"
headers = [{ name = "x-h", value = "1" }]
upstream = "u"
access = "public"

[[routes]]
name = "query-only"
prefix = "/q"
query_params = [{ name = "k", value = "v w" }]
upstream = "u"
access = "public"

[[routes]]
name = "wild"
hostnames = ["*.example.com"]
prefix = "/"
upstream = "u"
access = "public"

[[routes]]
name = "wild-deeper"
hostnames = ["*.eu.example.com"]
prefix = "/"
upstream = "u"
access = "public"

[[routes]]
name = "exact-host"
hostnames = ["api.example.com"]
prefix = "/"
upstream = "u"
access = "public"

[[routes]]
name = "exact-host-long-path"
hostnames = ["api.example.com"]
prefix = "/a/b/c"
upstream = "u"
access = "public"

[[routes]]
name = "two-hosts"
hostnames = ["shop.test", "*.shop.test"]
prefix = "/a"
upstream = "u"
access = "public"

[[routes]]
name = "post-only"
path = "/p"
methods = ["POST"]
upstream = "u"
access = "public"
"#;

fn table() -> Plan {
    let config = Config::from_toml(TABLE, "the test table", |_| None).unwrap();
    Plan::compile(config).unwrap()
}

/// The route a request goes to: its name, or `405`/`404`.
fn route_for(plan: &Plan, method: &str, host: Option<&str>, target: &str, headers: &[(&str, &str)]) -> String {
    let method: Method = method.parse().unwrap();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
    }
    let facts = Facts { method: &method, path, host, headers: &map, query };
    match plan.table.recognize(&facts) {
        Recognized::Route(i) => plan.table.routes[i].name.to_string(),
        Recognized::MethodNotAllowed => "405".into(),
        Recognized::NotFound => "404".into(),
    }
}

/// Method, host, target, headers, and the route expected.
type Case<'a> = (&'a str, Option<&'a str>, &'a str, &'a [(&'a str, &'a str)], &'a str);

#[test]
fn each_match_kind_and_the_precedence_between_them() {
    let plan = table();
    let none: &[(&str, &str)] = &[];
    #[rustfmt::skip]
    let cases: &[Case<'_>] = &[
        // Paths: an exact path over a prefix, the longest prefix first.
        ("PUT", None, "/a", none, "any-prefix-a"),
        ("PUT", None, "/a/x", none, "any-prefix-a"),
        ("PUT", None, "/a/b", none, "any-exact-a-b"),
        ("PUT", None, "/a/b/", none, "any-exact-a-b"),
        ("PUT", None, "/a/b/c", none, "any-prefix-a-b"),
        ("PUT", None, "/a/bc", none, "any-prefix-a"),
        ("PUT", None, "/ab", none, "404"),
        ("PUT", None, "/", none, "404"),
        // A method match over none, only where the path ties.
        ("GET", None, "/a/x", none, "any-prefix-a-get"),
        ("HEAD", None, "/a/x", none, "any-prefix-a-get"),
        ("GET", None, "/a/b", none, "any-exact-a-b"),
        ("GET", None, "/a/b/c", none, "any-prefix-a-b"),
        ("POST", None, "/p", none, "post-only"),
        ("GET", None, "/p", none, "405"),
        ("POST", None, "/p/x", none, "404"),
        // Headers: a match over none; more matches over fewer; regex whole-value.
        ("PUT", None, "/a/x", &[("x-canary", "always")], "canary-header"),
        ("PUT", None, "/a/x", &[("X-Canary", "always")], "canary-header"),
        ("PUT", None, "/a/x", &[("x-canary", "Always")], "any-prefix-a"),
        ("PUT", None, "/a/x", &[("x-canary", "never"), ("x-canary", "always")], "canary-header"),
        ("PUT", None, "/a/x", &[("x-version", "v3")], "version-regex"),
        ("PUT", None, "/a/x", &[("x-version", "v33")], "any-prefix-a"),
        ("PUT", None, "/a/x", &[("x-version", "xv3")], "any-prefix-a"),
        ("PUT", None, "/a/x", &[("x-version", "v1")], "any-prefix-a"),
        ("PUT", None, "/a/x", &[("x-canary", "always"), ("x-version", "v2")], "canary-and-version"),
        ("PUT", None, "/a/x", &[("x-canary", "always"), ("x-version", "v3")], "canary-header"),
        // A method match ranks above header matches.
        ("GET", None, "/a/x", &[("x-canary", "always")], "any-prefix-a-get"),
        // A longer path ranks above header matches.
        ("PUT", None, "/a/b/c", &[("x-canary", "always")], "any-prefix-a-b"),
        // Query parameters: decoded, the first of a name counts, fewer than headers.
        ("PUT", None, "/a/x?debug=on", none, "debug-query"),
        ("PUT", None, "/a/x?x=1&debug=on", none, "debug-query"),
        ("PUT", None, "/a/x?debug=%6Fn", none, "debug-query"),
        ("PUT", None, "/a/x?debug=off&debug=on", none, "any-prefix-a"),
        ("PUT", None, "/a/x?debug=ON", none, "any-prefix-a"),
        ("PUT", None, "/a/x?debugx=on", none, "any-prefix-a"),
        ("PUT", None, "/a/x?debug=on", &[("x-canary", "always")], "canary-header"),
        ("PUT", None, "/q?k=v+w", none, "query-only"),
        ("PUT", None, "/q?k=v%20w", &[("x-h", "1")], "header-beats-query"),
        ("PUT", None, "/q?k=v", none, "404"),
        // Hosts: exact over wildcard over none; the longer wildcard first; a
        // host match over any path length.
        ("GET", Some("api.example.com"), "/x", none, "exact-host"),
        ("GET", Some("API.Example.COM"), "/x", none, "exact-host"),
        ("GET", Some("api.example.com"), "/a/b/c/d", none, "exact-host-long-path"),
        ("GET", Some("api.example.com"), "/a/b", none, "exact-host"),
        ("GET", Some("web.example.com"), "/a/b", none, "wild"),
        ("GET", Some("a.b.example.com"), "/x", none, "wild"),
        ("GET", Some("fr.eu.example.com"), "/x", none, "wild-deeper"),
        ("GET", Some("eu.example.com"), "/x", none, "wild"),
        ("GET", Some("example.com"), "/a/x", none, "any-prefix-a-get"),
        ("GET", Some("example.com"), "/x", none, "404"),
        ("GET", Some("evil-example.com"), "/x", none, "404"),
        ("GET", None, "/x", none, "404"),
        // One route, two hostnames: each ranked as what it is.
        ("PUT", Some("shop.test"), "/a/x", none, "two-hosts"),
        ("PUT", Some("www.shop.test"), "/a/x", none, "two-hosts"),
        ("PUT", Some("www.shop.test"), "/z", none, "404"),
        ("PUT", Some("other.test"), "/a/x", none, "any-prefix-a"),
    ];
    assert!(cases.len() >= 40);
    for (method, host, target, headers, expected) in cases {
        assert_eq!(
            route_for(&plan, method, *host, target, headers),
            *expected,
            "{method} {host:?} {target} {headers:?}"
        );
    }
}

#[test]
fn the_request_host_is_read_without_its_port_from_host_or_the_authority() {
    let plan = table();
    let with_host = |host: &str| {
        let req = http::Request::get("/x").header("host", host).body(()).unwrap();
        let host = crate::routes::request_host(&req);
        route_for(&plan, "GET", host, "/x", &[])
    };
    assert_eq!(with_host("api.example.com:8443"), "exact-host");
    assert_eq!(with_host("api.example.com"), "exact-host");
    assert_eq!(with_host("[::1]:8080"), "404");
    let absolute = http::Request::get("http://api.example.com:80/x").body(()).unwrap();
    assert_eq!(crate::routes::request_host(&absolute), Some("api.example.com"));
}

#[test]
fn match_configuration_errors_name_their_field() {
    let base = "[upstreams.u]\nendpoints = [\"http://127.0.0.1:9\"]\n[[routes]]\nprefix = \"/a\"\nupstream = \"u\"\naccess = \"public\"\n";
    let cases = [
        ("hostnames = [\"a b.com\"]", "routes[0].hostnames[0]"),
        ("hostnames = [\"*.\"]", "routes[0].hostnames[0]"),
        ("hostnames = [\"a.com:80\"]", "routes[0].hostnames[0]"),
        ("hostnames = [\"a.com\", \"A.com\"]", "routes[0].hostnames[1]"),
        ("headers = [{ name = \"bad name\", value = \"1\" }]", "routes[0].headers[0].name"),
        ("headers = [{ name = \"x\", value = \"(\", type = \"regular_expression\" }]", "routes[0].headers[0].value"),
        (
            "headers = [{ name = \"x\", value = \"(?:[a-z]{40}){40}\", type = \"regular_expression\" }]",
            "routes[0].headers[0].value",
        ),
        ("headers = [{ name = \"x\", value = \"1\" }, { name = \"X\", value = \"2\" }]", "routes[0].headers[1].name"),
        ("query_params = [{ name = \"\", value = \"1\" }]", "routes[0].query_params[0].name"),
    ];
    for (line, field) in cases {
        let text = format!("{base}{line}\n");
        let config = Config::from_toml(&text, "test", |_| None).unwrap_or_else(|e| panic!("{line}: {e}"));
        let err = Plan::compile(config).unwrap_err();
        assert_eq!(err.field, field, "{line}: {err}");
    }
    // The same match twice is refused, named or not; differing in a header is
    // not, and the default names differ too.
    let twice = format!("{base}[[routes]]\nprefix = \"/a\"\nupstream = \"u\"\naccess = \"public\"\n");
    let err = Plan::compile(Config::from_toml(&twice, "test", |_| None).unwrap()).unwrap_err();
    assert_eq!(err.field, "routes[1].name", "{err}");
    let named = format!("{twice}name = \"other\"\n");
    let err = Plan::compile(Config::from_toml(&named, "test", |_| None).unwrap()).unwrap_err();
    assert!(err.message.contains("same requests"), "{err}");
    let differ = format!("{twice}headers = [{{ name = \"x\", value = \"1\" }}]\n");
    let plan = Plan::compile(Config::from_toml(&differ, "test", |_| None).unwrap()).unwrap();
    let names: Vec<&str> = plan.table.routes.iter().map(|r| &*r.name).collect();
    assert_eq!(names, ["/a/*", "/a/* if x"]);
}

#[test]
fn a_header_route_cannot_open_a_stricter_paths_other_methods() {
    // GET /a is for tokens; a public route matching a header would take a
    // PUT /a that carries it: a hole by omission, refused.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a shared secret of at least 32 bytes").unwrap();
    let text = format!(
        "[jwt]\nsecret_file = {secret:?}\n[upstreams.u]\nendpoints = [\"http://127.0.0.1:9\"]\n\
         [[routes]]\nprefix = \"/a\"\nmethods = [\"GET\"]\nupstream = \"u\"\naccess = \"token\"\n\
         [[routes]]\nprefix = \"/a\"\nheaders = [{{ name = \"x\", value = \"1\" }}]\nupstream = \"u\"\naccess = \"public\"\n\
         [[routes]]\nprefix = \"/a\"\nupstream = \"u\"\naccess = \"token\"\n"
    );
    let err = Plan::compile(Config::from_toml(&text, "test", |_| None).unwrap()).unwrap_err();
    assert_eq!(err.field, "routes[0].methods", "{err}");
    assert!(err.message.contains("routes[1]"), "{err}");
}

/// A generated route: an optional host (exact or wildcard), a path, maybe a
/// method, a few headers and query parameters, from small alphabets so that
/// requests often match several.
#[derive(Debug, Clone)]
struct GenRoute {
    host: Option<(bool, String)>,
    exact: bool,
    path: String,
    get_only: bool,
    headers: Vec<(String, String)>,
    query: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
struct GenRequest {
    host: String,
    path: String,
    get: bool,
    headers: Vec<(String, String)>,
    query: Vec<(String, String)>,
}

fn segment() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b"]).prop_map(str::to_owned)
}

fn gen_path(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 1..=max).prop_map(|s| format!("/{}", s.join("/")))
}

fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::btree_map(
        prop::sample::select(vec!["h1", "h2"]).prop_map(str::to_owned),
        prop::sample::select(vec!["0", "1"]).prop_map(str::to_owned),
        0..=2,
    )
    .prop_map(|m| m.into_iter().collect())
}

fn gen_host() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["x.com", "a.x.com", "b.a.x.com"]).prop_map(str::to_owned)
}

fn gen_route() -> impl Strategy<Value = GenRoute> {
    (prop::option::of((any::<bool>(), gen_host())), any::<bool>(), gen_path(2), any::<bool>(), pairs(), pairs())
        .prop_map(|(host, exact, path, get_only, headers, query)| GenRoute {
            host,
            exact,
            path,
            get_only,
            headers,
            query,
        })
}

fn gen_request() -> impl Strategy<Value = GenRequest> {
    (gen_host(), gen_path(3), any::<bool>(), pairs(), pairs())
        .prop_map(|(host, path, get, headers, query)| GenRequest { host, path, get, headers, query })
}

/// The oracle: whether `route` matches `req`, written from the rules alone.
fn oracle_matches(route: &GenRoute, req: &GenRequest) -> bool {
    let host_ok = match &route.host {
        None => true,
        Some((false, h)) => req.host == *h,
        Some((true, h)) => req.host.ends_with(&format!(".{h}")),
    };
    let path_ok = if route.exact {
        req.path == route.path
    } else {
        req.path == route.path || req.path.starts_with(&format!("{}/", route.path))
    };
    host_ok
        && path_ok
        && (!route.get_only || req.get)
        && route.headers.iter().all(|h| req.headers.contains(h))
        && route.query.iter().all(|(n, v)| req.query.iter().find(|(m, _)| m == n).is_some_and(|(_, w)| w == v))
}

/// The oracle's ranking, from the Gateway API's list: smaller is more specific.
fn oracle_rank(route: &GenRoute) -> (u8, i64, u8, i64, bool, i64, i64) {
    let (host_kind, host_len) = match &route.host {
        Some((false, h)) => (0, -(h.len() as i64)),
        Some((true, h)) => (1, -(h.len() as i64)),
        None => (2, 0),
    };
    let path_kind = if route.exact { 0 } else { 1 };
    (
        host_kind,
        host_len,
        path_kind,
        -(route.path.len() as i64),
        !route.get_only,
        -(route.headers.len() as i64),
        -(route.query.len() as i64),
    )
}

fn toml_of(routes: &[GenRoute]) -> String {
    let mut text = String::from("[upstreams.u]\nendpoints = [\"http://127.0.0.1:9\"]\n");
    for (i, r) in routes.iter().enumerate() {
        text.push_str(&format!("[[routes]]\nname = \"r{i}\"\nupstream = \"u\"\naccess = \"public\"\n"));
        text.push_str(&format!("{} = {:?}\n", if r.exact { "path" } else { "prefix" }, r.path));
        if let Some((wild, h)) = &r.host {
            text.push_str(&format!("hostnames = [{:?}]\n", if *wild { format!("*.{h}") } else { h.clone() }));
        }
        if r.get_only {
            text.push_str("methods = [\"GET\"]\n");
        }
        let list = |pairs: &[(String, String)]| {
            pairs.iter().map(|(n, v)| format!("{{ name = {n:?}, value = {v:?} }}")).collect::<Vec<_>>().join(", ")
        };
        text.push_str(&format!("headers = [{}]\nquery_params = [{}]\n", list(&r.headers), list(&r.query)));
    }
    text
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// No request is routed by a less specific route while a more specific
    /// one matches it, whatever the table.
    #[test]
    fn the_most_specific_matching_route_always_wins(
        routes in prop::collection::vec(gen_route(), 1..12),
        requests in prop::collection::vec(gen_request(), 1..30),
    ) {
        let Ok(config) = Config::from_toml(&toml_of(&routes), "generated", |_| None) else {
            return Err(TestCaseError::fail("the generated TOML did not load"));
        };
        // Tables with two routes matching the same requests are refused; skip them.
        let Ok(plan) = Plan::compile(config) else { return Ok(()) };
        for req in &requests {
            let query: Vec<String> = req.query.iter().map(|(n, v)| format!("{n}={v}")).collect();
            let target = if query.is_empty() { req.path.clone() } else { format!("{}?{}", req.path, query.join("&")) };
            let headers: Vec<(&str, &str)> = req.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let chosen = route_for(&plan, if req.get { "GET" } else { "PUT" }, Some(&req.host), &target, &headers);
            let best = routes
                .iter()
                .enumerate()
                .filter(|(_, r)| oracle_matches(r, req))
                .min_by_key(|(i, r)| (oracle_rank(r), *i))
                .map(|(i, _)| format!("r{i}"));
            match best {
                Some(best) => prop_assert_eq!(&chosen, &best, "{:?}", req),
                None => prop_assert!(chosen == "404" || chosen == "405", "{chosen} for {req:?}"),
            }
        }
    }
}
