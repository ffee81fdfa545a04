//! The command line every server example shares: `[--listen IP:PORT]`,
//! 127.0.0.1:7007 by default, so every step of docs/learn.md meets the same
//! client. Not part of any lesson; each example includes it with `mod
//! listen;`.

use std::net::SocketAddr;
use std::process::exit;

/// The address from `[--listen IP:PORT]`. `--help` prints the usage and
/// exits 0; a bad argument prints one line naming `example` and exits 2.
pub fn addr(example: &str) -> SocketAddr {
    let usage = format!("usage: {example} [--listen IP:PORT] (default 127.0.0.1:7007)");
    let usage_error = |message: &str| -> ! {
        eprintln!("{example}: {message}; {usage}");
        exit(2);
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = match args[..] {
        [] => "127.0.0.1:7007",
        ["-h" | "--help"] => {
            println!("{usage}");
            exit(0);
        }
        ["--listen", text] => text,
        _ => usage_error(&format!("unexpected '{}'", args.join(" "))),
    };
    text.parse()
        .unwrap_or_else(|_| usage_error(&format!("'{text}' is not IP:PORT")))
}
