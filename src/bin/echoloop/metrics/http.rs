//! The little HTTP/1.1 the metrics endpoint speaks (RFC 9112): find the end
//! of one request head, judge it, and write one response that closes the
//! connection. No body is read, no connection kept alive, nothing decoded
//! beyond the request line and the header fields' syntax.

/// Most bytes of one request head (request line and header fields); a
/// scraper's is a few hundred.
pub const MAX_HEAD: usize = 8 * 1024;

/// What to answer a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (any query string): the exposition.
    Metrics,
    /// Any other path: 404.
    NotFound,
    /// `/metrics` with another method: 405 with `Allow: GET`.
    MethodNotAllowed,
    /// Not a well-formed HTTP/1.x request head: 400, saying why.
    BadRequest(&'static str),
}

/// The responses we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    HeadTooLarge,
    Unavailable,
}

impl Status {
    fn line(self) -> &'static str {
        match self {
            Status::Ok => "200 OK",
            Status::BadRequest => "400 Bad Request",
            Status::NotFound => "404 Not Found",
            Status::MethodNotAllowed => "405 Method Not Allowed",
            Status::HeadTooLarge => "431 Request Header Fields Too Large",
            Status::Unavailable => "503 Service Unavailable",
        }
    }
}

/// Where the request head in `buf` ends: the index just past the empty line
/// that closes it (CRLF, or a bare LF, which RFC 9112 lets a server accept).
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (at, &byte) in buf.iter().enumerate() {
        if byte != b'\n' {
            continue;
        }
        let line = &buf[line_start..at];
        if line.is_empty() || line == b"\r" {
            // The request line itself cannot be empty.
            if line_start > 0 {
                return Some(at + 1);
            }
        }
        line_start = at + 1;
    }
    None
}

/// Judges one complete request head (up to [`head_end`]).
pub fn route(head: &[u8]) -> Route {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let Some(request_line) = lines.next() else {
        return Route::BadRequest("no request line");
    };
    let mut parts = request_line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest("the request line is not METHOD TARGET VERSION");
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Route::BadRequest("the method is not a token");
    }
    if !target.starts_with(b"/") || !target.iter().all(|&b| b.is_ascii_graphic()) {
        return Route::BadRequest("the target is not a path");
    }
    let minor = match version.strip_prefix(b"HTTP/1.") {
        Some(&[minor]) if minor.is_ascii_digit() => minor,
        _ => return Route::BadRequest("not HTTP/1.x"),
    };
    let mut hosts = 0;
    for line in lines.take_while(|line| !line.is_empty()) {
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            return Route::BadRequest("obsolete line folding");
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Route::BadRequest("a header line without a colon");
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Route::BadRequest("a header name is not a token");
        }
        if !value
            .iter()
            .all(|&b| b == b'\t' || b == b' ' || b.is_ascii_graphic() || b >= 0x80)
        {
            return Route::BadRequest("a control character in a header value");
        }
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        }
    }
    if hosts > 1 || (minor != b'0' && hosts == 0) {
        return Route::BadRequest("HTTP/1.1 needs exactly one Host header");
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or(target);
    match (path, method) {
        (b"/metrics", b"GET") => Route::Metrics,
        (b"/metrics", _) => Route::MethodNotAllowed,
        _ => Route::NotFound,
    }
}

/// A whole response that ends the connection: status line, the headers,
/// the body.
pub fn response(status: Status, content_type: &str, body: &str) -> Vec<u8> {
    let allow = match status {
        Status::MethodNotAllowed => "Allow: GET\r\n",
        _ => "",
    };
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}\
         Connection: close\r\n\r\n",
        status.line(),
        body.len()
    );
    let mut bytes = Vec::with_capacity(head.len() + body.len());
    bytes.extend_from_slice(head.as_bytes());
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// A short plain-text response with `status` that says `why`.
pub fn error(status: Status, why: &str) -> Vec<u8> {
    let body = format!("{}: {why}\n", status.line());
    response(status, "text/plain; charset=utf-8", &body)
}

/// RFC 9110's `tchar`: the bytes of a method or a header name.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(head: &str) -> Route {
        let end = head_end(head.as_bytes()).expect("complete head");
        route(&head.as_bytes()[..end])
    }

    #[test]
    fn a_scrape_is_routed_to_the_metrics() {
        let scrape = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9\r\nUser-Agent: Prometheus/2\r\n\
                      Accept: text/plain;version=0.0.4\r\n\r\n";
        assert_eq!(judged(scrape), Route::Metrics);
        assert_eq!(judged("GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(judged("GET /metrics HTTP/1.1\nHost: a\n\n"), Route::Metrics);
    }

    #[test]
    fn other_paths_and_methods_are_told_apart() {
        assert_eq!(judged("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Route::NotFound);
        assert_eq!(
            judged("POST /x HTTP/1.1\r\nHost: a\r\n\r\n"),
            Route::NotFound
        );
        assert_eq!(
            judged("POST /metrics HTTP/1.1\r\nHost: a\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(
            judged("get /metrics HTTP/1.1\r\nHost: a\r\n\r\n"),
            Route::MethodNotAllowed
        );
    }

    #[test]
    fn malformed_heads_are_bad_requests() {
        for head in [
            "GET /metrics\r\n\r\n",
            "GET  /metrics HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET metrics HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /metrics HTTP/2.0\r\nHost: a\r\n\r\n",
            "GET /metrics HTTP/1.1\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nHost a\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nHo st: a\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nHost: a\rb\r\n\r\n",
            "G(T /metrics HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(
                matches!(judged(head), Route::BadRequest(_)),
                "{head:?} was accepted"
            );
        }
    }

    #[test]
    fn the_head_ends_at_the_first_empty_line_only() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(head_end(b"\r\n"), None);
        let head = b"GET / HTTP/1.0\r\n\r\nbody";
        assert_eq!(head_end(head), Some(head.len() - 4));
    }

    #[test]
    fn a_405_names_the_allowed_method_and_every_response_closes() {
        let text = String::from_utf8(error(Status::MethodNotAllowed, "GET only")).unwrap();
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(text.contains("\r\nAllow: GET\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
}
