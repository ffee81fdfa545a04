//! `loadgen`: the verifying load generator, or `loadgen tokio-echo ADDR` to
//! run the tokio peer server.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("tokio-echo") {
        let addr = args.get(1).map_or("127.0.0.1:7008", String::as_str);
        let addr = match addr.parse() {
            Ok(addr) => addr,
            Err(_) => {
                eprintln!("tokio-echo: '{addr}' is not IP:PORT");
                std::process::exit(2);
            }
        };
        if let Err(e) = echoloop_loadgen::tokio_peer::serve(addr) {
            eprintln!("tokio-echo: {e}");
            std::process::exit(1);
        }
        return;
    }
    std::process::exit(echoloop_loadgen::main_with_args(args));
}
