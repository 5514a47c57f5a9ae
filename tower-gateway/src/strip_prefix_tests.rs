use std::convert::Infallible;

use tower::{ServiceBuilder, ServiceExt};

use super::*;

const PREFIX: &str = "/api/products";

#[test]
fn strips_on_segment_boundary() {
    let cases = [
        ("/api/products/item?x=1", Some("/item?x=1")),
        ("/api/products/item", Some("/item")),
        ("/api/products", Some("/")),
        ("/api/products/", Some("/")),
        ("/api/products?x=1&y=%2F", Some("/?x=1&y=%2F")),
        ("/api/products/a/b/c", Some("/a/b/c")),
        ("/api/products/item/", Some("/item/")),
        ("/api/products/a%20b", Some("/a%20b")),
        ("/api/products/...", Some("/...")),
        ("/api/products/.well-known", Some("/.well-known")),
        ("/api/productsX", None),
        ("/api/products-x/item", None),
        ("/API/products/item", None),
        ("/api/%70roducts/%69tem", Some("/item")),
        ("/api/products/a%2db%7e%5F", Some("/a-b~_")),
        ("/api/products/caf%c3%a9", Some("/caf%C3%A9")),
        ("/api", None),
        ("/", None),
    ];
    for (input, expected) in cases {
        let uri: Uri = input.parse().unwrap();
        let got = strip_uri(PREFIX, &uri).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(got.map(|u| u.to_string()).as_deref(), expected, "{input}");
    }
}

#[test]
fn absolute_form_keeps_scheme_and_authority() {
    let uri: Uri = "http://gw.example/api/products/item?q".parse().unwrap();
    let got = strip_uri(PREFIX, &uri).unwrap().unwrap();
    assert_eq!(got, "http://gw.example/item?q");
}

#[test]
fn root_prefix_strips_nothing() {
    let layer = StripPrefixLayer::new("/");
    assert_eq!(layer.prefix(), "");
    let uri: Uri = "/a/b?c".parse().unwrap();
    assert_eq!(strip_uri(layer.prefix(), &uri).unwrap().unwrap(), "/a/b?c");
}

/// Hostile paths: each is refused, so no spelling of it can leave the prefix.
#[test]
fn hostile_paths_are_refused() {
    use PathError::*;
    let cases = [
        ("/api/products/../checkout", DotSegment),
        ("/api/products/./item", DotSegment),
        ("/api/products/..", DotSegment),
        ("/api/products/.", DotSegment),
        ("/api/products/%2e%2e/checkout", DotSegment),
        ("/api/products/%2E%2E/checkout", DotSegment),
        ("/api/products/.%2e/checkout", DotSegment),
        ("/api/products/%2e./checkout", DotSegment),
        ("/api/products/%2e/item", DotSegment),
        ("/api/products/..;/checkout", DotSegment),
        ("/api/products/..;jsessionid=x/checkout", DotSegment),
        ("/api/products/%2e%2e;x/checkout", DotSegment),
        ("/api/products%2F..%2Fcheckout", EncodedSlash),
        ("/api/products/%2f", EncodedSlash),
        ("/api/products/..%2fcheckout", EncodedSlash),
        ("/api/products/..%5ccheckout", Backslash),
        ("/api/products/%5C..%5Ccheckout", Backslash),
        ("/api/products//item", EmptySegment),
        ("//api/products/item", EmptySegment),
        ("/api//products", EmptySegment),
        ("/api/products/item%00.json", ControlCharacter),
        ("/api/products/%0d%0aSet-Cookie:x", ControlCharacter),
        ("/api/products/%7f", ControlCharacter),
        ("/api/products/%252e%252e/checkout", DoubleEncoded),
        ("/api/products/%252f", DoubleEncoded),
        ("/api/products/%255c", DoubleEncoded),
        ("/api/products/%", BadPercentEncoding),
        ("/api/products/%2", BadPercentEncoding),
        ("/api/products/%zz", BadPercentEncoding),
        ("/../api/products/item", DotSegment),
        ("/api/products/a/../../checkout", DotSegment),
        ("/api/products/%2e%2e%2fcheckout", EncodedSlash),
        ("/api/products;v=1/item", Parameter),
        ("/api/products/item;jsessionid=1", Parameter),
        ("/api/products/item%3bx", Parameter),
        ("/api/products/%2561", DoubleEncoded),
    ];
    assert!(cases.len() >= 25);
    for (input, expected) in cases {
        let uri: Uri = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(strip_uri(PREFIX, &uri), Err(expected), "{input}");
    }
    // Checked on the raw path, before the URI type could have accepted them.
    assert_eq!(check_path("/api/products\\..\\checkout"), Err(Backslash));
    assert_eq!(check_path("/api/products/\0"), Err(ControlCharacter));
    assert_eq!(check_path("api/products"), Err(NotAbsolute));
}

#[test]
fn prefixes_are_validated() {
    assert_eq!(StripPrefixLayer::try_new("/api/products/").unwrap().prefix(), "/api/products");
    for bad in ["api", "/api/../x", "/api//x", "/a?b", "/a%2f", "/a;b", ""] {
        assert!(StripPrefixLayer::try_new(bad).is_err(), "{bad:?}");
    }
}

async fn seen_uri(path: &str) -> (StatusCode, String, Option<String>) {
    let svc = ServiceBuilder::new().layer(StripPrefixLayer::new(PREFIX)).service_fn(|req: Request<()>| async move {
        let prefix = req.headers().get("x-forwarded-prefix").map(|v| v.to_str().unwrap().to_owned());
        let mut res = Response::new(Bytes::from(req.uri().to_string()));
        res.extensions_mut().insert(prefix);
        Ok::<_, Infallible>(res)
    });
    let req = Request::get(path).header("x-forwarded-prefix", "/evil").body(()).unwrap();
    let res = svc.oneshot(req).await.unwrap();
    let prefix = res.extensions().get::<Option<String>>().cloned().flatten();
    (res.status(), String::from_utf8(res.into_body().flat().to_vec()).unwrap(), prefix)
}

#[tokio::test]
async fn service_rewrites_and_sets_forwarded_prefix() {
    let (status, uri, prefix) = seen_uri("/api/products/item?x=1").await;
    assert_eq!((status, uri.as_str(), prefix.as_deref()), (StatusCode::OK, "/item?x=1", Some(PREFIX)));
    // No match: untouched, and the client's header is not ours to replace.
    let (status, uri, prefix) = seen_uri("/api/productsX").await;
    assert_eq!((status, uri.as_str(), prefix.as_deref()), (StatusCode::OK, "/api/productsX", Some("/evil")));
}

#[tokio::test]
async fn service_refuses_with_json_and_never_calls_inner() {
    let svc = ServiceBuilder::new().layer(StripPrefixLayer::new(PREFIX)).service_fn(|_: Request<()>| async {
        panic!("the inner service must not be called") as Result<Response<Bytes>, Infallible>
    });
    let req = Request::get("/api/products/%2e%2e/checkout").body(()).unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = serde_json::from_slice(&res.into_body().flat()).unwrap();
    assert_eq!(body["error"]["code"], "invalid_path");
}
