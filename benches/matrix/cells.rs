//! The matrix's cells: what each measures, with which load generator
//! arguments.

pub(crate) struct Cell {
    pub(crate) name: String,
    pub(crate) args: Vec<String>,
    /// Server loops (tokio workers) and load generator threads; 1 is the
    /// pinned layout, more runs everything unpinned.
    pub(crate) threads: usize,
    /// For multi-loop cells: the name of the 1-loop cell they scale.
    pub(crate) scales: Option<&'static str>,
    /// Connections, for the chart (ping-pong depth-1 cells only).
    pub(crate) chart_conns: Option<usize>,
    /// Measure idle memory per connection (hold cell).
    pub(crate) hold: bool,
    /// Count server syscalls per message.
    pub(crate) syscalls: bool,
    /// UDP echo: the servers get a UDP socket and the load its address.
    pub(crate) udp: bool,
}

pub(crate) fn cells() -> Vec<Cell> {
    let cell = |name: &str, args: &[&str], chart_conns, hold, syscalls| Cell {
        name: name.to_string(),
        args: args.iter().map(|s| s.to_string()).collect(),
        threads: 1,
        scales: None,
        chart_conns,
        hold,
        syscalls,
        udp: false,
    };
    let mut cells = vec![
        cell(
            "pingpong 64B x1",
            &["pingpong", "-c", "1", "-s", "64"],
            Some(1),
            false,
            false,
        ),
        cell(
            "pingpong 64B x100",
            &["pingpong", "-c", "100", "-s", "64"],
            Some(100),
            false,
            true,
        ),
        cell(
            "pingpong 64B x1000",
            &["pingpong", "-c", "1000", "-s", "64"],
            Some(1000),
            false,
            false,
        ),
        cell(
            "pingpong 64B x10000",
            &["pingpong", "-c", "10000", "-s", "64"],
            Some(10000),
            false,
            false,
        ),
        cell(
            "pipelined 64B x1000 depth 16",
            &["pingpong", "-c", "1000", "-s", "64", "-d", "16"],
            None,
            false,
            false,
        ),
        cell(
            "stream 64KiB x10",
            &["stream", "-c", "10", "-s", "65536"],
            None,
            false,
            false,
        ),
        cell(
            "churn 64B, 50 parallel",
            &["churn", "-p", "50", "-s", "64"],
            None,
            false,
            false,
        ),
        cell(
            "hold 19000, 100 active",
            &[
                "hold", "-c", "19000", "-k", "100", "--idle", "1", "-s", "64",
            ],
            None,
            true,
            false,
        ),
    ];
    // UDP echo: 100 sockets, one 64 B datagram in flight each,
    // against the tokio peer's `UdpSocket` loop on current_thread.
    cells.push(Cell {
        udp: true,
        ..cell(
            "udp 64B x100",
            &["udp", "-c", "100", "-s", "64"],
            None,
            false,
            false,
        )
    });
    // Multi-loop cells: 2, 4, 8, ... loops up to the machine's cores.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let scaled: [(&'static str, &[&str]); 2] = [
        (
            "pingpong 64B x1000",
            &["pingpong", "-c", "1000", "-s", "64"],
        ),
        (
            "pipelined 64B x1000 depth 16",
            &["pingpong", "-c", "1000", "-s", "64", "-d", "16"],
        ),
    ];
    let mut threads = 2;
    while threads <= cores.max(2) {
        for (base, args) in scaled {
            let mut c = cell(
                &format!("{threads} loops: {base}"),
                args,
                None,
                false,
                false,
            );
            c.threads = threads;
            c.scales = Some(base);
            cells.push(c);
        }
        threads *= 2;
    }
    cells
}
