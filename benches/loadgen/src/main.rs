//! `loadgen`: the verifying load generator (`pingpong`, `stream`, `churn`,
//! `hold`, `once`), or `loadgen tokio-echo --listen ADDR` to run the tokio
//! peer server. `loadgen --help` lists them all.

fn main() {
    std::process::exit(echoloop_loadgen::main_with_args(std::env::args().skip(1)));
}
