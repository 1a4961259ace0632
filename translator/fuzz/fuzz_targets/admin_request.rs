//! Everything the admin API parses from a request before acting: the method and request
//! target (as hyper hands them over), routing (`admin::route`), the query string
//! (`admin::parse_query`, `admin::page_params`), the path parameters and bodies of
//! `POST /delay/{prefix}` and `POST /flows/{id}/move` (`admin::delay_params`,
//! `admin::move_params`) and the bearer token (`admin::authorize`).
//!
//! Input: `METHOD SP TARGET LF AUTHORIZATION LF BODY`. Invariants: no panic; at most 16
//! query pairs; a page of 1 to 1000 flows; path parameters are substrings of the path; a
//! non-loopback peer is authorised only with the exact token.
#![no_main]

use std::net::IpAddr;
use std::sync::LazyLock;

use hyper::{Method, Uri};
use libfuzzer_sys::fuzz_target;
use translator::admin::{
    AdminToken, Route, authorize, delay_params, move_params, page_params, parse_query, route,
};

const TOKEN: &str = "0123456789abcdef-fuzz-token";

static TOKEN_VALUE: LazyLock<AdminToken> =
    LazyLock::new(|| AdminToken::new(TOKEN).expect("a valid token"));

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let line = parts.next().unwrap_or_default();
    let auth = parts.next();
    let body = parts.next().unwrap_or_default();
    let (method, target) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &b"/"[..]),
    };
    // hyper refuses what does not parse as a method or a request target.
    let (Ok(method), Ok(uri)) = (Method::from_bytes(method), Uri::try_from(target)) else {
        return;
    };
    let path = uri.path();
    let r = route(&method, path);
    let _ = r.label();
    let query = parse_query(uri.query().unwrap_or(""));
    assert!(query.len() <= 16);
    if let Ok((_, limit)) = page_params(&query) {
        assert!((1..=1000).contains(&limit));
    }
    match &r {
        Route::Delay(prefix) => {
            assert!(path.contains(prefix.as_str()));
            let _ = delay_params(prefix, &query, body);
        }
        Route::Move(id) => {
            assert!(path.contains(id.as_str()) && !id.contains('/'));
            if let Ok((flow, local)) = move_params(id, body, 54325) {
                // The decimal FlowID of the path (leading zeros and `+` are u32 syntax).
                assert_eq!(id.parse::<u32>().ok(), Some(flow.get()));
                assert!(local.port() != 0 && !local.ip().is_unspecified());
            }
        }
        _ => {}
    }
    let peer: IpAddr = [192, 0, 2, 7].into();
    if authorize(peer, auth, Some(&TOKEN_VALUE)).is_ok() {
        let given = auth.expect("authorised without a header");
        assert_eq!(
            given.get(7..).map(<[u8]>::trim_ascii),
            Some(TOKEN.as_bytes())
        );
    }
});
